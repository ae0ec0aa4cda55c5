//! The terminal program's parts: command parsing and output.

pub mod commands;
pub mod output;
