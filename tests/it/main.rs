//! The one integration-test binary: riegel over real HTTP, with an echo
//! portal and a real SMTP server on loopback (see harness.rs).

mod harness;

mod attack;
mod account;
mod browser;
mod demo;
mod gateway;
mod hashing;
mod login;
mod mail;
mod portal;
mod postgres;
mod regulation;
mod reset;
mod totp;
