//! The one integration-test binary (linking is slow): each module drives a real `vitalflow serve`
//! process over HTTP on an ephemeral port.

mod api;
mod auth;
mod common;
mod connectors;
mod domain;
mod erasure;
mod field;
mod fitbit;
mod freshness;
mod hostile;
mod persisted;
mod restart;
mod robustness;
mod tls;
mod views;
