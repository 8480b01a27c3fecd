//! The one integration-test binary (linking is slow): each module drives a real `vitalflow serve`
//! process over HTTP on an ephemeral port.

mod api;
mod common;
mod connectors;
mod domain;
mod fitbit;
mod restart;
mod views;
