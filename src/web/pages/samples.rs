//! Sample page and mail contexts: what the handlers pass, with made-up
//! values. Production code uses them for one thing only, the start-up render
//! check ([`super::Pages::new`] renders every page and mail with every
//! variant here, so a broken override fails at start-up, never at a user's
//! request); the tests use them too.

use std::fmt::Write as _;

use minijinja::context;
use minijinja::value::Value;

use super::render::overlay;

/// A QR-like placeholder in the format the `qrcode` crate writes (not scannable).
fn sample_qr_svg() -> String {
    const N: u32 = 25;
    const Q: u32 = 4;
    let size = N + 2 * Q;
    let mut d = String::new();
    let finder = |x: u32, y: u32| -> Option<bool> {
        for (fx, fy) in [(0, 0), (N - 7, 0), (0, N - 7)] {
            if (fx..fx + 8).contains(&x) && (fy..fy + 8).contains(&y) {
                let (dx, dy) = (x.wrapping_sub(fx), y.wrapping_sub(fy));
                if dx == 7 || dy == 7 {
                    return Some(false);
                }
                let ring = dx.min(dy).min(6 - dx.min(6)).min(6 - dy.min(6));
                return Some(ring != 1);
            }
        }
        None
    };
    let mut seed: u32 = 0x2545_f491;
    for y in 0..N {
        for x in 0..N {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let dark = finder(x, y).unwrap_or(seed % 5 < 2);
            if dark {
                let _ = write!(d, "M{} {}h1v1H{}V{}", x + Q, y + Q, x + Q, y + Q);
            }
        }
    }
    format!(
        r##"<?xml version="1.0" standalone="yes"?><svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{size}" height="{size}" viewBox="0 0 {size} {size}" shape-rendering="crispEdges"><rect x="0" y="0" width="{size}" height="{size}" fill="#fff"/><path fill="#000" d="{d}"/></svg>"##
    )
}

/// A representative page-specific context for each page and mail (`mail/<name>`;
/// `reset` returns the union of the page and the mail context).
pub fn sample_context(name: &str) -> Value {
    let p = "/_riegel";
    match name {
        "login" => context! {
            action => format!("{p}/login?rd=%2Fmieter%2Fuebersicht"),
            username => "mieter@example.at",
            error => (),
            notice => (),
            forgot_url => format!("{p}/forgot"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
        },
        "setup" => context! {
            qr_svg => sample_qr_svg(),
            secret_grouped => "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP",
            otpauth_uri => "otpauth://totp/IMMO%20PRO:mieter?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=IMMO%20PRO",
            continue_url => format!("{p}/setup/confirm"),
        },
        "setup_confirm" => context! {
            action => format!("{p}/setup/confirm"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            back_url => format!("{p}/setup"),
        },
        "activated" => context! {
            recovery_codes => vec!["k7d2m-x9q4t", "p3w8n-c6r1z", "h5v2b-y8m3k", "t4q9x-d2n7w", "r8c1p-m5z6h", "w2y7k-b9t3q", "n6m4d-x1r8c", "z3h5t-q7p2y"],
            continue_url => "/mieter/uebersicht",
        },
        "verify" => context! {
            action => format!("{p}/verify"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            recovery_url => format!("{p}/verify?recovery=1"),
        },
        "recovery" => context! {
            action => format!("{p}/verify?recovery=1"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            back_url => format!("{p}/verify"),
            forgot_url => format!("{p}/forgot"),
        },
        "forgot" => context! {
            action => format!("{p}/forgot"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            username => "",
            back_url => format!("{p}/login"),
        },
        "forgot_sent" => context! { back_url => format!("{p}/login"), minutes => 30 },
        "reset" => overlay(&[
            sample_context("mail/reset"),
            context! {
                action => format!("{p}/reset/dG9rZW4"),
                csrf => "c3JmLXRva2VuLXNhbXBsZQ",
                error => (),
                min_length => 10,
            },
        ]),
        "reset_done" => context! { login_url => format!("{p}/login") },
        "logout" => context! { action => format!("{p}/logout"), csrf => "c3JmLXRva2VuLXNhbXBsZQ" },
        "logged_out" => context! { login_url => format!("{p}/login") },
        "error" => context! {
            title_key => "error_404_title",
            message_key => "error_404_text",
            primary_url => "/",
            primary_key => "error_home",
        },
        "account" => context! {
            display_name => "Maria Muster",
            username => "mmuster",
            email => "maria@example.at",
            authenticators => vec![
                context! { id => 1, name => "", added => "7. November 2024 um 14:05 Uhr", last_used => "2. Dezember 2026 um 09:12 Uhr", remove_action => format!("{p}/account/authenticators/1/remove"), form => "remove-1" },
                context! { id => 2, name => "Tablet", added => "1. Dezember 2026 um 18:30 Uhr", last_used => (), remove_action => format!("{p}/account/authenticators/2/remove"), form => "remove-2" },
            ],
            can_remove => true,
            recovery_left => 7,
            sessions => vec![
                context! { id => "0011223344556677", browser => "Firefox", system => "Windows", ip => "192.0.2.10", started => "2. Dezember 2026 um 08:00 Uhr", last_seen => "2. Dezember 2026 um 09:12 Uhr", current => true, unfinished => false, end_action => format!("{p}/account/sessions/0011223344556677/end") },
                context! { id => "8899aabbccddeeff", browser => (), system => (), ip => (), started => "1. Dezember 2026 um 18:30 Uhr", last_seen => "1. Dezember 2026 um 18:45 Uhr", current => false, unfinished => true, end_action => format!("{p}/account/sessions/8899aabbccddeeff/end") },
            ],
            other_sessions => 1,
            notice => (),
            error_form => "",
            error => (),
            min_length => 10,
            password_action => format!("{p}/account/password"),
            add_action => format!("{p}/account/authenticators"),
            codes_action => format!("{p}/account/recovery-codes"),
            end_others_action => format!("{p}/account/sessions/end-others"),
            logout_url => format!("{p}/logout"),
            portal_url => "/",
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
        },
        "account_add" => overlay(&[
            sample_context("setup"),
            context! {
                name => "Neues Handy",
                action => format!("{p}/account/authenticators/confirm"),
                back_url => format!("{p}/account"),
                error => (),
                csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            },
        ]),
        "account_codes" => context! {
            recovery_codes => vec!["k7d2m-x9q4t", "p3w8n-c6r1z", "h5v2b-y8m3k", "t4q9x-d2n7w", "r8c1p-m5z6h", "w2y7k-b9t3q", "n6m4d-x1r8c", "z3h5t-q7p2y", "b2c3d-f4g5h", "j6k7m-n8p9q"],
            back_url => format!("{p}/account"),
        },
        "recovery_done" => context! {
            remaining => 7,
            add_action => format!("{p}/account/authenticators"),
            continue_url => "/mieter/uebersicht",
            account_url => format!("{p}/account"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
        },
        "new_device" => context! {
            state => "sent",
            email => "m…@example.at",
            minutes => 30,
            resent => false,
            action => format!("{p}/new-device"),
            back_url => format!("{p}/login"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
        },
        "new_device_open" => context! {
            action => format!("{p}/new-device/dG9rZW4"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
        },
        "mail/new_device" => context! {
            link => "https://portal.example.at/_riegel/new-device/dG9rZW4tc2FtcGxl",
            minutes => 30,
            name => "Maria Muster",
        },
        "mail/authenticator_added" | "mail/authenticator_removed" => context! {
            name => "Maria Muster",
            time => "2. Dezember 2026 um 14:05 Uhr",
            device => "Tablet",
        },
        "mail/recovery_codes_new" => context! {
            name => "Maria Muster",
            time => "2. Dezember 2026 um 14:05 Uhr",
        },
        "mail/sessions_ended" => context! {
            name => "Maria Muster",
            time => "2. Dezember 2026 um 14:05 Uhr",
            count => 2,
        },
        "mail/reset" => context! {
            link => "https://portal.example.at/_riegel/reset/dG9rZW4tc2FtcGxl",
            minutes => 30,
            name => "Maria Muster",
        },
        "mail/password_changed" | "password_changed" => context! {
            name => "Maria Muster",
            time => "07.11.2024 14:05",
        },
        "mail/recovery_used" | "recovery_used" => context! {
            name => "Maria Muster",
            time => "07.11.2024 14:05",
            remaining => 7,
        },
        _ => context! {},
    }
}

/// The sample context plus every error/notice key the handlers may pass.
pub(super) fn sample_variants(name: &str) -> Vec<Value> {
    let base = sample_context(name);
    let with = |extra: Value| overlay(&[base.clone(), extra]);
    let errors: &[&str] = match name {
        "login" => &["err_login_failed", "err_banned", "err_csrf", "err_required"],
        "setup_confirm" | "verify" => &[
            "err_csrf",
            "err_required",
            "err_code_format",
            "err_code_invalid",
            "err_enrol_code_invalid",
            "err_banned",
        ],
        "account_add" => &["err_csrf", "err_code_format", "err_enrol_code_invalid", "err_banned"],
        "recovery" => &[
            "err_csrf",
            "err_required",
            "err_code_format",
            "err_recovery_invalid",
            "err_banned",
        ],
        "forgot" => &["err_csrf", "err_required", "err_banned"],
        "reset" => &[
            "err_csrf",
            "err_required",
            "err_password_short",
            "err_password_long",
            "err_password_mismatch",
            "err_password_is_name",
        ],
        _ => &[],
    };
    let mut out = vec![base.clone()];
    out.extend(
        errors
            .iter()
            .map(|e| with(context! { error => *e, minutes => 15 })),
    );
    if name == "account" {
        let forms = ["password", "add", "codes", "remove-1", "remove-2", "sessions"];
        let keys = [
            "err_csrf",
            "err_required",
            "err_banned",
            "err_current_password",
            "err_password_short",
            "err_password_long",
            "err_password_mismatch",
            "err_password_is_name",
            "err_code_format",
            "err_account_code_invalid",
            "err_name_required",
            "err_name_invalid",
            "err_last_authenticator",
        ];
        for form in forms {
            for key in keys {
                out.push(with(context! { error_form => form, error => key, minutes => 15 }));
            }
        }
        for n in [
            "password_changed",
            "authenticator_added",
            "authenticator_removed",
            "session_ended",
            "sessions_ended",
            "session_gone",
            "enrolment_expired",
        ] {
            out.push(with(context! { notice => format!("account_notice_{n}") }));
        }
        // One authenticator (no remove forms), no recovery codes, no other session, no e-mail.
        out.push(with(context! { can_remove => false, recovery_left => 0, other_sessions => 0, email => () }));
        out.push(with(context! { can_remove => false, error_form => "remove-1", error => "err_last_authenticator" }));
        out.push(with(context! { recovery_left => 1 }));
    }
    if name == "new_device" {
        for state in ["sent", "not_sent", "contact"] {
            for resent in [false, true] {
                out.push(with(context! { state => state, resent => resent, email => if state == "contact" { None } else { Some("m…@example.at") } }));
            }
        }
    }
    if name == "recovery_done" {
        for r in [0, 1] {
            out.push(with(context! { remaining => r }));
        }
    }
    if name == "login" {
        for n in [
            "notice_logged_out",
            "notice_password_changed",
            "notice_login_expired",
            "notice_sessions_ended",
        ] {
            out.push(with(context! { notice => n, username => "" }));
        }
        // A lock until an operator or a reset lifts it: no minutes.
        out.push(with(context! { error => "err_banned", minutes => 0 }));
    }
    if name == "error" {
        for code in [
            "400",
            "403",
            "404",
            "413",
            "429",
            "500",
            "502",
            "503",
            "504",
            "reset_invalid",
            "new_device_invalid",
            "new_device_browser",
        ] {
            out.push(context! {
                title_key => format!("error_{code}_title"),
                message_key => format!("error_{code}_text"),
                minutes => 15,
                primary_url => "/_riegel/forgot",
                primary_key => "forgot_submit",
                second_url => "/_riegel/login",
                second_key => "to_login",
            });
        }
        for key in ["error_retry", "error_home", "to_login"] {
            out.push(context! { title_key => "error_500_title", message_key => "error_500_text", primary_url => "/", primary_key => key });
        }
    }
    out
}

pub(super) fn mail_sample_variants(name: &str) -> Vec<Value> {
    let base = sample_context(&format!("mail/{name}"));
    if name == "recovery_used" {
        [0, 1, 7]
            .iter()
            .map(|r| overlay(&[base.clone(), context! { remaining => *r }]))
            .collect()
    } else {
        vec![base]
    }
}
