//! stub
pub mod blob;
pub mod clock;
pub mod engine;
pub mod error;
pub mod op;
pub mod state;
pub mod write;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod engine_model;
