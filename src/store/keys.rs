//! Typed keys. A key is encoded to bytes in exactly one way and decoded
//! back, and every lookup or delete names one key exactly: no key is ever
//! matched by a prefix of its text (`u:1` once matched `u:10` … `u:19`).

use std::net::IpAddr;

use ipnet::IpNet;

/// Lower-cased, trimmed key for the login index and unknown-login counters.
pub fn login_key(s: &str) -> String {
    s.trim().to_lowercase()
}

/// What a regulation counter counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CounterKey {
    /// Password, code and recovery-code attempts of one account.
    Account(u64),
    /// Password attempts for a login name no account has (see [`login_key`]).
    UnknownLogin(String),
    /// Attempts from one client network: an IPv4 address, or the /64 of an
    /// IPv6 address (one host usually has a whole /64).
    Address(IpNet),
    /// Reset mails sent to one account.
    ResetAccount(u64),
    /// Reset requests from one client network.
    ResetAddress(IpNet),
}

const ACCOUNT: u8 = 1;
const UNKNOWN_LOGIN: u8 = 2;
const ADDRESS: u8 = 3;
const RESET_ACCOUNT: u8 = 4;
const RESET_ADDRESS: u8 = 5;

/// The network an address counts for: IPv4 /32, IPv6 /64.
pub fn client_network(ip: IpAddr) -> IpNet {
    let ip = match ip {
        // An IPv4-mapped IPv6 address is the IPv4 host.
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let prefix = if ip.is_ipv4() { 32 } else { 64 };
    // Both prefix lengths are valid for their family.
    IpNet::new(ip, prefix).map(|n| n.trunc()).unwrap_or_else(|_| IpNet::from(ip))
}

impl CounterKey {
    pub fn login(name: &str) -> Self {
        CounterKey::UnknownLogin(login_key(name))
    }

    pub fn address(ip: IpAddr) -> Self {
        CounterKey::Address(client_network(ip))
    }

    pub fn reset_address(ip: IpAddr) -> Self {
        CounterKey::ResetAddress(client_network(ip))
    }

    /// The one byte encoding of this key: a tag, then fixed-width fields
    /// (the login name last, whole).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn net(tag: u8, n: &IpNet) -> Vec<u8> {
            let mut v = vec![tag];
            match n.addr() {
                IpAddr::V4(a) => {
                    v.push(4);
                    v.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    v.push(6);
                    v.extend_from_slice(&a.octets());
                }
            }
            v.push(n.prefix_len());
            v
        }
        match self {
            CounterKey::Account(id) => [&[ACCOUNT][..], &id.to_be_bytes()].concat(),
            CounterKey::ResetAccount(id) => [&[RESET_ACCOUNT][..], &id.to_be_bytes()].concat(),
            CounterKey::UnknownLogin(name) => [&[UNKNOWN_LOGIN][..], name.as_bytes()].concat(),
            CounterKey::Address(n) => net(ADDRESS, n),
            CounterKey::ResetAddress(n) => net(RESET_ADDRESS, n),
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let (&tag, rest) = b.split_first()?;
        let id = || rest.try_into().ok().map(u64::from_be_bytes);
        let net = || -> Option<IpNet> {
            let (&family, rest) = rest.split_first()?;
            let (&prefix, addr) = rest.split_last()?;
            let ip = match family {
                4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
                6 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
                _ => return None,
            };
            IpNet::new(ip, prefix).ok()
        };
        Some(match tag {
            ACCOUNT => CounterKey::Account(id()?),
            RESET_ACCOUNT => CounterKey::ResetAccount(id()?),
            UNKNOWN_LOGIN => CounterKey::UnknownLogin(String::from_utf8(rest.to_vec()).ok()?),
            ADDRESS => CounterKey::Address(net()?),
            RESET_ADDRESS => CounterKey::ResetAddress(net()?),
            _ => return None,
        })
    }
}

impl std::fmt::Display for CounterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CounterKey::Account(id) => write!(f, "account {id}"),
            CounterKey::UnknownLogin(n) => write!(f, "unknown login {n:?}"),
            CounterKey::Address(n) => write!(f, "address {n}"),
            CounterKey::ResetAccount(id) => write!(f, "reset mails to account {id}"),
            CounterKey::ResetAddress(n) => write!(f, "reset requests from {n}"),
        }
    }
}

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A password reset link.
    Reset = 1,
    /// A "Neues Gerät einrichten" link (enrolment after a lost phone).
    NewDevice = 2,
}

impl TokenKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(TokenKind::Reset),
            2 => Some(TokenKind::NewDevice),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips_and_no_two_keys_share_an_encoding() {
        let keys = [
            CounterKey::Account(1),
            CounterKey::Account(10),
            CounterKey::Account(u64::MAX),
            CounterKey::ResetAccount(1),
            CounterKey::login("Anna"),
            CounterKey::login("annalena"),
            CounterKey::login(""),
            CounterKey::address("203.0.113.9".parse().expect("ip")),
            CounterKey::address("2001:db8::1".parse().expect("ip")),
            CounterKey::reset_address("203.0.113.9".parse().expect("ip")),
        ];
        let mut seen = std::collections::HashSet::new();
        for k in &keys {
            let b = k.to_bytes();
            assert_eq!(CounterKey::from_bytes(&b).as_ref(), Some(k), "{k}");
            assert!(seen.insert(b), "{k} shares its bytes");
        }
        // No key's bytes are a prefix of another's of the same kind but for
        // the login name (which is the whole rest of its key).
        let a1 = CounterKey::Account(1).to_bytes();
        assert!(!CounterKey::Account(256).to_bytes().starts_with(&a1));
        assert_eq!(CounterKey::from_bytes(&[ACCOUNT, 1, 2]), None);
        assert_eq!(CounterKey::from_bytes(&[]), None);
        assert_eq!(CounterKey::from_bytes(&[99, 1]), None);
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_v4_as_v4() {
        let a = CounterKey::address("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = CounterKey::address("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("ip"));
        let c = CounterKey::address("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, CounterKey::Address("2001:db8:1:2::/64".parse().expect("net")));
        assert_eq!(
            CounterKey::address("::ffff:203.0.113.9".parse().expect("ip")),
            CounterKey::address("203.0.113.9".parse().expect("ip"))
        );
        assert_ne!(
            CounterKey::address("203.0.113.9".parse().expect("ip")),
            CounterKey::address("203.0.113.10".parse().expect("ip"))
        );
    }

    #[test]
    fn login_names_are_folded() {
        assert_eq!(CounterKey::login("  Anna "), CounterKey::login("anna"));
        assert_ne!(CounterKey::login("anna"), CounterKey::login("annalena"));
    }
}
