//! stub
pub mod blob;
pub mod clock;
pub mod engine;
#[cfg(test)]
mod engine_model;
pub mod error;
pub mod op;
#[cfg(test)]
mod proptests;
pub mod state;
#[cfg(test)]
mod tests;
pub mod write;
