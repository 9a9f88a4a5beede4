//! The apx gateway: OpenAI- and Anthropic-compatible endpoints in front of
//! many providers, with gateway-issued keys.
//!
//! A request's path through the code, top to bottom:
//! [`server`] accepts it → [`auth`] checks the gateway key → [`routing`] finds
//! the model's [`providers`] entry → [`proxy`] translates, forwards and streams
//! the answer back. [`config`] is the one schema everything is built from.

pub mod api;
pub mod auth;
pub mod config;
pub mod errors;
pub mod intern;
pub mod logging;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod time;

pub use config::{Config, ConfigError};
pub use server::{ServeError, run, serve};
