//! The crate's one error type.
//!
//! Variants are named for what the caller did wrong, so that a caller can match on them; candle's
//! own failures are wrapped in [`Error::Candle`]. Messages are lowercase without a final period.

use candle_core::DType;

/// Everything that can go wrong in perturb.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor has the wrong number of dimensions or the wrong size along one of them.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    ShapeMismatch {
        /// Which argument was wrong (`"input"`, `"labels"`, …).
        what: &'static str,
        /// The expected shape, in words (`"[N, C, H, W]"`, `"[4]"`).
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("{what}: expected dtype {expected}, got {got:?}")]
    DTypeMismatch {
        /// Which argument was wrong.
        what: &'static str,
        /// The accepted dtype(s), in words.
        expected: &'static str,
        /// The dtype that was passed.
        got: DType,
    },
    /// A tensor holds NaN or an infinity.
    #[error("{what}: contains NaN or infinite values")]
    NonFinite {
        /// Which argument was wrong.
        what: &'static str,
    },
    /// Input pixels fall outside the budget's pixel box.
    #[error("pixels must lie in [{lo}, {hi}], found values in [{min}, {max}]")]
    PixelsOutOfRange {
        /// Smallest pixel value found.
        min: f32,
        /// Largest pixel value found.
        max: f32,
        /// Lower edge of the allowed box.
        lo: f32,
        /// Upper edge of the allowed box.
        hi: f32,
    },
    /// A label or target names a class the model does not have.
    #[error("{what}[{index}] = {class} is out of range for a model with {classes} classes")]
    LabelOutOfRange {
        /// `"labels"` or `"targets"`.
        what: &'static str,
        /// Sample index.
        index: usize,
        /// The offending class index.
        class: i64,
        /// Number of classes of the model.
        classes: usize,
    },
    /// A targeted goal asks for the class the sample already has as its label.
    #[error("targets[{index}] = {class} equals the sample's label")]
    TargetEqualsLabel {
        /// Sample index.
        index: usize,
        /// The class that is both label and target.
        class: u32,
    },
    /// ε is zero, negative or not finite.
    #[error("eps must be positive and finite, got {0}")]
    InvalidEpsilon(f32),
    /// The pixel box is empty or not finite.
    #[error("pixel bounds must be finite with lo < hi, got [{lo}, {hi}]")]
    InvalidBounds {
        /// Lower edge.
        lo: f32,
        /// Upper edge.
        hi: f32,
    },
    /// An attack or loss parameter is out of its valid range.
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name as in the builder (`"steps"`, `"step_size"`, …).
        name: &'static str,
        /// The value that was given.
        value: String,
        /// What the valid range is.
        reason: &'static str,
    },
    /// The model's output is not logits of shape `[N, K]` for a batch of N inputs.
    #[error("model output must be logits of shape [{batch}, K] with K >= 2, got {got:?}")]
    ModelOutput {
        /// Batch size of the input.
        batch: usize,
        /// Shape the model returned.
        got: Vec<usize>,
    },
    /// The model's logits are NaN or infinite: no verdict (fooled or robust) can be read from
    /// them.
    #[error("the model's outputs are not finite (NaN or infinite logits) on samples {samples:?}")]
    NonFiniteLogits {
        /// The samples concerned (the first 10): positions in the batch given to an attack or a
        /// model check; positions in the data set when the error comes through an
        /// [`Evaluator`](crate::eval::Evaluator).
        samples: Vec<usize>,
    },
    /// A loss needs more classes than the model has.
    #[error("loss {loss} needs at least {needed} classes, the model has {got}")]
    TooFewClasses {
        /// Loss name.
        loss: &'static str,
        /// Classes required.
        needed: usize,
        /// Classes of the model.
        got: usize,
    },
    /// Autograd returned no gradient for the input: the input is not connected to the logits,
    /// usually because a layer without a backward pass sits on the path.
    #[error("no gradient reached the input: a layer on the path has no backward pass")]
    GradientMissing,
    /// A gradient attack on a model that is only a function (no input gradient).
    #[error(
        "the model is a function without gradients (FnClassifier): gradient attacks cannot run \
         on it; use a black-box attack (square), or craft the examples on a differentiable \
         surrogate and transfer them (perturb::eval::transfer, `perturb transfer`)"
    )]
    NotDifferentiable,
    /// The gradient self-check found autograd disagreeing with finite differences.
    #[error(
        "input gradient disagrees with finite differences: directional derivative {autograd} \
         (autograd) vs {finite_difference} (finite difference), relative error {relative_error}"
    )]
    GradientMismatch {
        /// Autograd's directional derivative along the worst direction.
        autograd: f64,
        /// The finite-difference estimate along the same direction.
        finite_difference: f64,
        /// Relative error between the two.
        relative_error: f64,
    },
    /// A weights file does not match its expected sha256: corrupted or tampered with.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {got}")]
    Checksum {
        /// The file that was checked.
        file: std::path::PathBuf,
        /// The sha256 it should have (hex).
        expected: String,
        /// The sha256 it has (hex).
        got: String,
    },
    /// A name the zoo shipped a model under before, now another name.
    #[error("model {name:?} is now {now:?}: {why}")]
    RenamedModel {
        /// The requested (former) name.
        name: String,
        /// The model's name now.
        now: &'static str,
        /// Why it was renamed.
        why: &'static str,
    },
    /// A model name that the zoo does not know.
    #[error("unknown model {name:?}; shipped models: {known}")]
    UnknownModel {
        /// The requested name.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// An attack name that the [registry](crate::attack::Registry) does not know.
    #[error("unknown attack {name:?}; known attacks: {known}")]
    UnknownAttack {
        /// The requested name.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// An attack specification (registry parameters, a spec file) that does not describe a valid
    /// attack: an unknown parameter, a value of the wrong type, a name taken twice.
    #[error("attack spec {attack:?}: {reason}")]
    AttackSpec {
        /// The attack named by the spec (or the file it came from).
        attack: String,
        /// What is wrong, naming the parameter.
        reason: String,
    },
    /// A class name that the model's label set does not hold, or holds more than once.
    #[error("class {name:?}: {reason}")]
    UnknownClass {
        /// The requested name.
        name: String,
        /// Why it does not resolve (unknown, ambiguous with the candidates, out of range).
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file concerned.
        file: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A weights file lacks a tensor or has it in the wrong shape.
    #[error("weights {file}: {reason}")]
    Weights {
        /// The weights file.
        file: std::path::PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// An ONNX file that perturb cannot use: truncated or corrupted, external weights, other
    /// than one `f32` image input and one output, or an operator configuration not supported.
    #[error("{file}: {reason}")]
    Onnx {
        /// The ONNX file.
        file: std::path::PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// An ONNX graph with operators perturb does not evaluate, all of them named.
    #[error("{file}: unsupported ONNX operators: {}", ops.join(", "))]
    OnnxUnsupported {
        /// The ONNX file.
        file: std::path::PathBuf,
        /// The operator types, sorted, each once.
        ops: Vec<String>,
    },
    /// A failure inside candle (device, kernel, allocation).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A data file ends before its header says it should. For gzip'd files the byte counts are
    /// of the decompressed stream.
    #[error("{file}: truncated: expected {expected_bytes} bytes, got {got_bytes}")]
    Truncated {
        /// The file that was read.
        file: std::path::PathBuf,
        /// Bytes the header (or the format's fixed header) calls for.
        expected_bytes: u64,
        /// Bytes the file actually holds.
        got_bytes: u64,
    },
    /// A file does not start with a supported magic number: for IDX, `0x000008NN` (unsigned
    /// bytes, rank `NN >= 1`).
    #[error(
        "{file}: bad magic number {got:#010x}, expected 0x000008NN \
         (IDX of unsigned bytes, rank NN >= 1)"
    )]
    BadMagic {
        /// The file that was read.
        file: std::path::PathBuf,
        /// The first four bytes, big-endian.
        got: u32,
    },
    /// A data file is malformed: a broken gzip stream, dimensions that overflow, trailing bytes,
    /// an array of the wrong rank, a value out of range.
    #[error("{file}: {reason}")]
    Data {
        /// The file that was read.
        file: std::path::PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// An image file and its label file hold different numbers of samples.
    #[error("{images_file} holds {images} images but {labels_file} holds {labels} labels")]
    CountMismatch {
        /// The image file.
        images_file: std::path::PathBuf,
        /// Number of images in it.
        images: usize,
        /// The label file.
        labels_file: std::path::PathBuf,
        /// Number of labels in it.
        labels: usize,
    },
    /// A device that this build cannot use: CUDA without the `cuda` feature, or an unknown name.
    #[error("device {spec}: {reason}")]
    Device {
        /// The device as requested (`cuda:0`).
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A baseline report cannot be compared with this run: another attack, ε, seed, target,
    /// parameter or sample range, or no per-sample outcomes.
    #[error("baseline not comparable: {reason}")]
    BaselineMismatch {
        /// What differs.
        reason: String,
    },
    /// An evaluation would not fit in the memory available to this process
    /// ([`MemoryPlan`](crate::eval::MemoryPlan)): refused before anything is allocated.
    #[error(
        "{what} need about {} of memory, but {} is available \
         (a smaller batch size or fewer samples fit; PERTURB_MEMORY_LIMIT sets the figure)",
        crate::eval::human_bytes(*needed),
        crate::eval::human_bytes(*available)
    )]
    InsufficientMemory {
        /// The request, in words.
        what: String,
        /// Bytes it needs (an estimate, see [`MemoryPlan`](crate::eval::MemoryPlan)).
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Shard reports that do not make one run ([`merge`](crate::eval::merge)): from different
    /// runs, overlapping, given twice, or with shards missing (named).
    #[error("cannot merge the shards: {reason}")]
    ShardMerge {
        /// What is wrong, naming the shards.
        reason: String,
    },
    /// A verdict was asked of an evaluation of no samples (an empty data set or shard gives a
    /// valid report of zero counts, on which no threshold can be judged).
    #[error("no samples were evaluated: robust accuracy of an empty data set cannot meet or miss a threshold")]
    EmptyEvaluation,
    /// A model's robust accuracy fell below the required minimum ([`assert_robust`]).
    ///
    /// [`assert_robust`]: crate::eval::assert_robust
    #[error(
        "robust accuracy {robust_accuracy:.4} ({robust} of {samples}) against {attack} \
         is below the required {required:.4}"
    )]
    NotRobust {
        /// Measured robust accuracy.
        robust_accuracy: f64,
        /// Samples that held.
        robust: usize,
        /// Samples evaluated.
        samples: usize,
        /// The attack, in words: name, norm and ε.
        attack: String,
        /// The required minimum.
        required: f64,
    },
}

/// `Result` with perturb's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
