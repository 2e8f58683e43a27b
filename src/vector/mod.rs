//! Vector indexes over FAISS.

mod index;

pub use index::{Hit, VectorIndex};
