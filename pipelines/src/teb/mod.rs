//! Transfer-entropy-bottleneck models (docs/teb.md) on the pipeline's side: binning shared by
//! training and live decoding ([`bins`]), the aligned training data ([`data`]) and how stored
//! streams and Parquet files become it ([`load`]). The model
//! files and the per-bin step are in `kernels::teb`.

pub mod bins;
pub mod data;
pub mod load;
pub mod train;
