//! bootstrap-token-operator: issues long-lived bootstrap tokens (RS256 JWTs) into Secrets and
//! serves an OAuth 2.0 token endpoint.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backoff;
pub mod config;
pub mod controller;
pub mod deletion;
pub mod duration;
pub mod endpoint;
pub mod events;
pub mod keyguard;
pub mod leader;
pub mod policy;
pub mod resource;
pub mod revocation;
pub mod shim;
pub mod telemetry;
pub mod token;
