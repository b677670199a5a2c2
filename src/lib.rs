pub mod domain;
pub mod store;
pub mod writer;
