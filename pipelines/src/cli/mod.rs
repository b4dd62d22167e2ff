//! The `supplystream` binary's commands, one module per family (`main.rs` only parses and
//! dispatches).

pub(crate) mod args;
pub(crate) mod demo;
pub(crate) mod ops;
pub(crate) mod query;
pub(crate) mod run;
