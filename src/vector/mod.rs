//! Vector indexes over FAISS, and their files in snapshots.

mod image;
mod index;
mod omp;

pub use image::{read_image, spec_fingerprint, IMAGE_VERSION};
pub use index::{Hit, IndexImage, VectorIndex};
