//! The one integration-test binary: riegel over real HTTP, with an echo
//! portal and a real SMTP server on loopback (see harness.rs).

mod harness;

mod attack;
mod audit;
mod account;
mod browser;
mod demo;
mod fuzzed;
mod gateway;
mod hashing;
mod http2;
mod login;
mod mail;
mod metrics;
mod portal;
mod postgres;
mod reload;
mod regulation;
mod reset;
mod totp;
mod websocket;
