//! A TEB model on disk: `model.json` (what it reads and writes, sizes, normalisation, how it was
//! trained) and `weights.safetensors` (f32 tensors named as the PyTorch module of `docs/teb.md`
//! names them, so a model trained in PyTorch loads too). Everything read is checked: sizes
//! against each other, every value finite, every std > 0, so a bad file is an error naming the
//! file and the problem, never a panic or a NaN on a data path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const FORMAT: u32 = 1;
/// Largest size of any dimension we accept from a file (a bound on what a hostile file allocates).
pub const MAX_DIM: usize = 65_536;
/// Largest weights file read (bytes).
pub const MAX_WEIGHTS_BYTES: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
}

fn file_error(path: &Path, problem: impl ToString) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Which stream and columns a side of the model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamColumns {
    pub stream_id: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hidden {
    pub target_lstm: usize,
    pub source_lstm: usize,
    pub source_mlp: usize,
}

/// Statistics of the training data; inputs are `(v - mean) / std` before the networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub source_mean: Vec<f32>,
    pub source_std: Vec<f32>,
    pub target_mean: Vec<f32>,
    pub target_std: Vec<f32>,
}

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TebConfig {
    pub format: u32,
    pub source: StreamColumns,
    pub target: StreamColumns,
    /// Bin width, seconds.
    pub bin_s: f64,
    pub latent: usize,
    pub hidden: Hidden,
    pub normalisation: Normalisation,
    /// How it was trained (free form: the trainer's settings).
    #[serde(default)]
    pub training: serde_json::Value,
    /// The validation report of the trainer (free form).
    #[serde(default)]
    pub report: serde_json::Value,
}

impl TebConfig {
    pub fn source_dim(&self) -> usize {
        self.source.columns.len()
    }
    pub fn target_dim(&self) -> usize {
        self.target.columns.len()
    }

    /// Every problem of the configuration on its own (the weights are checked against it later).
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this neurod reads {FORMAT})",
                self.format
            ));
        }
        let dims = [
            ("source.columns", self.source_dim()),
            ("target.columns", self.target_dim()),
            ("latent", self.latent),
            ("hidden.target_lstm", self.hidden.target_lstm),
            ("hidden.source_lstm", self.hidden.source_lstm),
            ("hidden.source_mlp", self.hidden.source_mlp),
        ];
        for (name, d) in dims {
            if d == 0 || d > MAX_DIM {
                return Err(format!("`{name}` is {d}: must be 1..={MAX_DIM}"));
            }
        }
        if !(self.bin_s.is_finite() && self.bin_s > 0.0) {
            return Err(format!("`bin_s` is {}: must be > 0", self.bin_s));
        }
        let n = &self.normalisation;
        let stats = [
            (
                "normalisation.source_mean",
                &n.source_mean,
                self.source_dim(),
                false,
            ),
            (
                "normalisation.source_std",
                &n.source_std,
                self.source_dim(),
                true,
            ),
            (
                "normalisation.target_mean",
                &n.target_mean,
                self.target_dim(),
                false,
            ),
            (
                "normalisation.target_std",
                &n.target_std,
                self.target_dim(),
                true,
            ),
        ];
        for (name, v, len, positive) in stats {
            if v.len() != len {
                return Err(format!("`{name}` has {} values for {len} columns", v.len()));
            }
            if let Some(bad) = v
                .iter()
                .find(|x| !x.is_finite() || (positive && **x <= 0.0))
            {
                return Err(format!(
                    "`{name}` holds {bad}: must be finite{}",
                    if positive { " and > 0" } else { "" }
                ));
            }
        }
        Ok(())
    }
}

/// One `nn.Linear`: `weight` is `[rows, cols]` row-major, `out = weight · in + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One single-layer `nn.LSTM` (gates i, f, g, o stacked in the rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Lstm {
    pub input: usize,
    pub hidden: usize,
    /// `[4H, input]`
    pub weight_ih: Vec<f32>,
    /// `[4H, H]`
    pub weight_hh: Vec<f32>,
    pub bias_ih: Vec<f32>,
    pub bias_hh: Vec<f32>,
}

/// Every tensor of the model, named after the PyTorch module (`docs/teb.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct TebWeights {
    pub target_lstm: Lstm,
    /// `target.enc`: Hy → 3L (μ_c | log σ_c² | u_c).
    pub target_enc: Linear,
    pub source_lstm: Lstm,
    /// `source.mlp.0`: Hx + L → Hm (then tanh).
    pub source_mlp1: Linear,
    /// `source.mlp.2`: Hm → 2L (μ_x | Δ log σ²).
    pub source_mlp2: Linear,
    /// `decoder`: L → Dy.
    pub decoder: Linear,
}

/// Sizes of a model, from which every tensor's shape follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub source: usize,
    pub target: usize,
    pub latent: usize,
    pub hidden: Hidden,
}

impl Dims {
    /// (name, shape) of every tensor, in the order of the PyTorch state dict.
    pub fn tensor_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (dx, dy, l) = (self.source, self.target, self.latent);
        let (hy, hx, hm) = (
            self.hidden.target_lstm,
            self.hidden.source_lstm,
            self.hidden.source_mlp,
        );
        vec![
            ("target.lstm.weight_ih_l0", vec![4 * hy, dy]),
            ("target.lstm.weight_hh_l0", vec![4 * hy, hy]),
            ("target.lstm.bias_ih_l0", vec![4 * hy]),
            ("target.lstm.bias_hh_l0", vec![4 * hy]),
            ("target.enc.weight", vec![3 * l, hy]),
            ("target.enc.bias", vec![3 * l]),
            ("source.lstm.weight_ih_l0", vec![4 * hx, dx]),
            ("source.lstm.weight_hh_l0", vec![4 * hx, hx]),
            ("source.lstm.bias_ih_l0", vec![4 * hx]),
            ("source.lstm.bias_hh_l0", vec![4 * hx]),
            ("source.mlp.0.weight", vec![hm, hx + l]),
            ("source.mlp.0.bias", vec![hm]),
            ("source.mlp.2.weight", vec![2 * l, hm]),
            ("source.mlp.2.bias", vec![2 * l]),
            ("decoder.weight", vec![dy, l]),
            ("decoder.bias", vec![dy]),
        ]
    }
}

impl TebWeights {
    /// Build from named tensors (any order); `get(name)` returns the flat values. Shapes are
    /// checked by the caller against [`Dims::tensor_shapes`].
    fn from_named(dims: &Dims, mut t: HashMap<&str, Vec<f32>>) -> Self {
        let mut take = |name: &str| t.remove(name).unwrap_or_default();
        let (dx, dy, l) = (dims.source, dims.target, dims.latent);
        let (hy, hx, hm) = (
            dims.hidden.target_lstm,
            dims.hidden.source_lstm,
            dims.hidden.source_mlp,
        );
        let lstm = |take: &mut dyn FnMut(&str) -> Vec<f32>, p: &str, input, hidden| Lstm {
            input,
            hidden,
            weight_ih: take(&format!("{p}.weight_ih_l0")),
            weight_hh: take(&format!("{p}.weight_hh_l0")),
            bias_ih: take(&format!("{p}.bias_ih_l0")),
            bias_hh: take(&format!("{p}.bias_hh_l0")),
        };
        let linear = |take: &mut dyn FnMut(&str) -> Vec<f32>, p: &str, rows, cols| Linear {
            rows,
            cols,
            weight: take(&format!("{p}.weight")),
            bias: take(&format!("{p}.bias")),
        };
        TebWeights {
            target_lstm: lstm(&mut take, "target.lstm", dy, hy),
            target_enc: linear(&mut take, "target.enc", 3 * l, hy),
            source_lstm: lstm(&mut take, "source.lstm", dx, hx),
            source_mlp1: linear(&mut take, "source.mlp.0", hm, hx + l),
            source_mlp2: linear(&mut take, "source.mlp.2", 2 * l, hm),
            decoder: linear(&mut take, "decoder", dy, l),
        }
    }

    /// (name, values) of every tensor, in [`Dims::tensor_shapes`] order.
    pub fn named(&self) -> Vec<(&'static str, &[f32])> {
        let w = self;
        vec![
            ("target.lstm.weight_ih_l0", &w.target_lstm.weight_ih[..]),
            ("target.lstm.weight_hh_l0", &w.target_lstm.weight_hh),
            ("target.lstm.bias_ih_l0", &w.target_lstm.bias_ih),
            ("target.lstm.bias_hh_l0", &w.target_lstm.bias_hh),
            ("target.enc.weight", &w.target_enc.weight),
            ("target.enc.bias", &w.target_enc.bias),
            ("source.lstm.weight_ih_l0", &w.source_lstm.weight_ih),
            ("source.lstm.weight_hh_l0", &w.source_lstm.weight_hh),
            ("source.lstm.bias_ih_l0", &w.source_lstm.bias_ih),
            ("source.lstm.bias_hh_l0", &w.source_lstm.bias_hh),
            ("source.mlp.0.weight", &w.source_mlp1.weight),
            ("source.mlp.0.bias", &w.source_mlp1.bias),
            ("source.mlp.2.weight", &w.source_mlp2.weight),
            ("source.mlp.2.bias", &w.source_mlp2.bias),
            ("decoder.weight", &w.decoder.weight),
            ("decoder.bias", &w.decoder.bias),
        ]
    }
}

/// A loaded model: configuration and weights, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct TebModel {
    pub config: TebConfig,
    pub weights: TebWeights,
}

impl TebModel {
    pub fn dims(&self) -> Dims {
        dims_of(&self.config)
    }

    /// Checks that every tensor has the length its shape needs, each layer's recorded sizes
    /// match `model.json`'s and the normalisation has one value per column. [`TebModel::load`]
    /// guarantees this; a model assembled in code is checked before a decoder indexes into it.
    pub fn check_shapes(&self) -> Result<(), String> {
        self.config.check()?;
        let d = self.dims();
        let w = &self.weights;
        let (hy, hx, hm, l) = (
            d.hidden.target_lstm,
            d.hidden.source_lstm,
            d.hidden.source_mlp,
            d.latent,
        );
        let sizes = [
            (
                "target.lstm",
                (w.target_lstm.input, w.target_lstm.hidden),
                (d.target, hy),
            ),
            (
                "source.lstm",
                (w.source_lstm.input, w.source_lstm.hidden),
                (d.source, hx),
            ),
            (
                "target.enc",
                (w.target_enc.rows, w.target_enc.cols),
                (3 * l, hy),
            ),
            (
                "source.mlp.0",
                (w.source_mlp1.rows, w.source_mlp1.cols),
                (hm, hx + l),
            ),
            (
                "source.mlp.2",
                (w.source_mlp2.rows, w.source_mlp2.cols),
                (2 * l, hm),
            ),
            ("decoder", (w.decoder.rows, w.decoder.cols), (d.target, l)),
        ];
        for (name, got, want) in sizes {
            if got != want {
                return Err(format!(
                    "`{name}` has sizes {got:?}, model.json needs {want:?}"
                ));
            }
        }
        for ((name, values), (_, shape)) in w.named().into_iter().zip(d.tensor_shapes()) {
            let n: usize = shape.iter().product();
            if values.len() != n {
                return Err(format!(
                    "tensor `{name}` has {} values, its shape {shape:?} needs {n}",
                    values.len()
                ));
            }
        }
        Ok(())
    }

    /// Reads `dir/model.json` and `dir/weights.safetensors`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = read_bounded(&config_path, 64 << 20)?;
        let config: TebConfig =
            serde_json::from_slice(&text).map_err(|e| file_error(&config_path, e))?;
        config.check().map_err(|p| file_error(&config_path, p))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = read_bounded(&weights_path, MAX_WEIGHTS_BYTES)?;
        let weights =
            parse_weights(&dims_of(&config), &bytes).map_err(|p| file_error(&weights_path, p))?;
        Ok(TebModel { config, weights })
    }

    /// Writes the model into `dir` (created if needed): each file to a temporary name, synced,
    /// then renamed, so a reader (a live `teb_decode` reloading) never sees half a model.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let bytes = serialize_weights(&self.weights).map_err(|p| file_error(dir, p))?;
        write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        let json = serde_json::to_vec_pretty(&self.config).map_err(|e| file_error(dir, e))?;
        write_atomic(&dir.join(CONFIG_FILE), &json)
    }

    /// A model with random weights (uniform ±1/√fan-in, PyTorch's default) for tests and
    /// benchmarks; normalisation is the identity.
    pub fn random(dims: Dims, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let named = dims
            .tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let fan_in = if name.starts_with("target.lstm") {
                    dims.hidden.target_lstm
                } else if name.starts_with("source.lstm") {
                    dims.hidden.source_lstm
                } else {
                    match shape.as_slice() {
                        [_, cols] => *cols,
                        _ => dims_fan_in_of_bias(&dims, name),
                    }
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                let n: usize = shape.iter().product();
                (
                    name,
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
                )
            })
            .collect();
        let cols = |n: usize, prefix: &str| (0..n).map(|i| format!("{prefix}{i}")).collect();
        let config = TebConfig {
            format: FORMAT,
            source: StreamColumns {
                stream_id: "source".into(),
                columns: cols(dims.source, "x"),
            },
            target: StreamColumns {
                stream_id: "target".into(),
                columns: cols(dims.target, "y"),
            },
            bin_s: 0.02,
            latent: dims.latent,
            hidden: dims.hidden,
            normalisation: Normalisation {
                source_mean: vec![0.0; dims.source],
                source_std: vec![1.0; dims.source],
                target_mean: vec![0.0; dims.target],
                target_std: vec![1.0; dims.target],
            },
            training: serde_json::Value::Null,
            report: serde_json::Value::Null,
        };
        TebModel {
            config,
            weights: TebWeights::from_named(&dims, named),
        }
    }
}

fn dims_fan_in_of_bias(dims: &Dims, name: &str) -> usize {
    match name {
        "target.enc.bias" => dims.hidden.target_lstm,
        "source.mlp.0.bias" => dims.hidden.source_lstm + dims.latent,
        "source.mlp.2.bias" => dims.hidden.source_mlp,
        _ => dims.latent, // decoder.bias
    }
}

pub fn dims_of(config: &TebConfig) -> Dims {
    Dims {
        source: config.source_dim(),
        target: config.target_dim(),
        latent: config.latent,
        hidden: config.hidden,
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ModelError> {
    let len = std::fs::metadata(path)
        .map_err(|e| file_error(path, e))?
        .len();
    if len > max {
        return Err(file_error(
            path,
            format!("{len} bytes, more than the {max} accepted"),
        ));
    }
    std::fs::read(path).map_err(|e| file_error(path, e))
}

/// The weights in `bytes`, checked against `dims`: every tensor present with its shape, f32,
/// finite; a tensor not in the layout is an error (it means the layout is not the one we run).
fn parse_weights(dims: &Dims, bytes: &[u8]) -> Result<TebWeights, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let expected = dims.tensor_shapes();
    for name in st.names() {
        if !expected.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "unexpected tensor `{name}` (see docs/teb.md for the layout)"
            ));
        }
    }
    let mut named = HashMap::new();
    for (name, shape) in expected {
        let view = st
            .tensor(name)
            .map_err(|_| format!("tensor `{name}` is missing"))?;
        if view.dtype() != Dtype::F32 {
            return Err(format!("tensor `{name}` is {:?}, not F32", view.dtype()));
        }
        if view.shape() != shape.as_slice() {
            return Err(format!(
                "tensor `{name}` has shape {:?}, the model.json sizes need {shape:?}",
                view.shape()
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(format!("tensor `{name}` holds a value that is not finite"));
        }
        named.insert(name, values);
    }
    Ok(TebWeights::from_named(dims, named))
}

fn serialize_weights(w: &TebWeights) -> Result<Vec<u8>, String> {
    let bytes: Vec<(&str, Vec<u8>, Vec<usize>)> = w
        .named()
        .into_iter()
        .map(|(name, v)| {
            let shape = shape_of(w, name);
            (
                name,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape,
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, b, shape)| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (*name, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

fn shape_of(w: &TebWeights, name: &str) -> Vec<usize> {
    let dims = Dims {
        source: w.source_lstm.input,
        target: w.target_lstm.input,
        latent: w.decoder.cols,
        hidden: Hidden {
            target_lstm: w.target_lstm.hidden,
            source_lstm: w.source_lstm.hidden,
            source_mlp: w.source_mlp1.rows,
        },
    };
    dims.tensor_shapes()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| file_error(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        Dims {
            source: 5,
            target: 2,
            latent: 3,
            hidden: Hidden {
                target_lstm: 4,
                source_lstm: 6,
                source_mlp: 7,
            },
        }
    }

    #[test]
    fn save_then_load_gives_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = TebModel::random(dims(), 7);
        model.save(dir.path()).unwrap();
        assert_eq!(TebModel::load(dir.path()).unwrap(), model);
    }

    #[test]
    fn a_wrong_shape_or_missing_tensor_names_the_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = TebModel::random(dims(), 7);
        model.save(dir.path()).unwrap();
        // model.json says 3 target columns now: the decoder's shape no longer fits.
        model.config.target.columns.push("y2".into());
        model.config.normalisation.target_mean.push(0.0);
        model.config.normalisation.target_std.push(1.0);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_vec(&model.config).unwrap(),
        )
        .unwrap();
        let err = TebModel::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(WEIGHTS_FILE) && err.contains("target.lstm.weight_ih_l0"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = TebModel::random(dims(), 1);
        model.config.normalisation.source_std[2] = 0.0;
        model.save(dir.path()).unwrap();
        let err = TebModel::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("normalisation.source_std") && err.contains(CONFIG_FILE),
            "{err}"
        );
        std::fs::write(dir.path().join(CONFIG_FILE), b"{\"format\": 1").unwrap();
        assert!(TebModel::load(dir.path()).is_err());
        std::fs::write(
            dir.path().join(WEIGHTS_FILE),
            b"\xff\xff\xff\xff\xff\xff\xff\x7f{",
        )
        .unwrap();
        assert!(TebModel::load(dir.path()).is_err());
    }
}
