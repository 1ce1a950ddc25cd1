//! riegel bolts two-factor login onto an existing web portal. See
//! ARCHITECTURE.md for the module map and its invariants.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod demo;
pub mod hashpool;
pub mod mail;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod sched;
pub mod store;
pub mod web;
