//! Batch normalization (PyTorch `BatchNorm2d`) over channel-major (C, N, H, W) tensors:
//! training statistics, running-statistics update, normalize (training or evaluation) and
//! backward.
//!
//! Shapes (channel-major): x and y (C, N, H, W), each channel one run of M = N*H*W values;
//! gamma, beta, dgamma, dbeta (C); mean, var, running_mean, running_var are per-channel
//! arrays read and written at `stat_offset + c`, so one array can hold the statistics of a
//! whole dense block (each channel's statistics are computed once, when it is produced).
//! The variance stored is the biased one (it normalizes); the running variance takes the
//! unbiased one, var * M / (M - 1), as in PyTorch.
//!
//! The training statistics and the backward come in two implementations: one workgroup per
//! channel (batchnorm.wgsl, what CPU drivers run best) and many workgroups per channel
//! ([`split`], what GPUs run best, with a small buffer of partial sums). The kernel policy
//! picks one per launch of [`batchnorm_stats_update`] and [`batchnorm_backward`].

pub mod split;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;

use bytemuck::{Pod, Zeroable};

use super::fault;
use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::{DType, View};
use crate::kernels::{
    read, read_f32, write, write_f32, Config, DeviceClass, Dispatch, Entry, Grid, Kernels, Needs,
    Policy, Shader, Source, Split, Variant, PLAIN,
};

/// Shapes, offsets and constants of one batch norm, also its uniform (binding 0). Build with
/// [`BatchNormParams::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BatchNormParams {
    /// Channels of this op.
    pub c: u32,
    /// Values per channel: N*H*W.
    pub m: u32,
    /// First element of x (and dx): a channel offset times M.
    pub x_offset: u32,
    /// First element of y (and dy): a channel offset times M.
    pub y_offset: u32,
    /// First channel of this op in the mean / var / running arrays.
    pub stat_offset: u32,
    pub eps: f32,
    pub momentum: f32,
    /// Non-zero: ReLU fused after the normalization (forward), and its mask applied to dy
    /// (backward, recomputed from x, so the activation itself is never stored).
    pub relu: u32,
    /// Where beta starts after gamma (and dbeta after dgamma) in the backward's one binding
    /// of both; set by the launcher.
    pub beta_at: u32,
    pub _pad: [u32; 3],
}

/// The op's name, as `--kernels` and the tuner name it.
pub const OP: &str = "batchnorm";

/// PyTorch's defaults.
pub const EPS: f32 = 1e-5;
pub const MOMENTUM: f32 = 0.1;

impl BatchNormParams {
    /// `input` is (N, C, H, W) in PyTorch order; eps 1e-5 and momentum 0.1 as in PyTorch.
    pub fn new(input: [u32; 4]) -> Result<Self> {
        let [n, c, h, w] = input;
        ensure_shape!(
            n > 0 && c > 0 && h > 0 && w > 0,
            OP,
            "input {input:?} must be positive in every dimension"
        );
        let m = n as u64 * h as u64 * w as u64;
        ensure_shape!(
            c as u64 * m <= u32::MAX as u64,
            OP,
            "input {input:?} has more than 2^32 - 1 elements"
        );
        Ok(BatchNormParams {
            c,
            m: m as u32,
            x_offset: 0,
            y_offset: 0,
            stat_offset: 0,
            eps: EPS,
            momentum: MOMENTUM,
            relu: 0,
            beta_at: 0,
            _pad: [0; 3],
        })
    }

    /// Reads x (and adds into dx) at channel `c` of a larger buffer.
    pub fn with_x_channel_offset(mut self, c: u32) -> Self {
        self.x_offset = super::channel_offset(c, self.m as u64);
        self
    }

    /// Writes y (and reads dy) at channel `c` of a larger buffer.
    pub fn with_y_channel_offset(mut self, c: u32) -> Self {
        self.y_offset = super::channel_offset(c, self.m as u64);
        self
    }

    /// Reads and writes the statistics of this op's channel 0 at channel `c` of the mean /
    /// var / running arrays (gamma and beta are still this op's own, indexed from 0).
    pub fn with_stat_offset(mut self, c: u32) -> Self {
        self.stat_offset = c;
        self
    }

    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Counts `m` values per channel in the running variance's unbiased correction
    /// (synchronized batch norm: every replica's examples); nothing else reads it after
    /// the statistics.
    pub fn with_count(mut self, m: u32) -> Self {
        self.m = m;
        self
    }

    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    /// Fuses a ReLU after the normalization (BN -> ReLU, as in every DenseNet layer).
    pub fn with_relu(mut self, relu: bool) -> Self {
        self.relu = relu as u32;
        self
    }

    /// Elements of x (and y) this op covers: C*M.
    pub fn len(&self) -> u64 {
        self.c as u64 * self.m as u64
    }

    /// Whether C*M is zero (never for params built by [`BatchNormParams::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements a view of x or dx must hold.
    pub fn x_len(&self) -> u64 {
        self.x_offset as u64 + self.len()
    }

    /// Elements a view of y or dy must hold.
    pub fn y_len(&self) -> u64 {
        self.y_offset as u64 + self.len()
    }

    /// Elements a mean / var / running array must hold.
    pub fn stat_len(&self) -> u64 {
        self.stat_offset as u64 + self.c as u64
    }

    /// Checks what the builders cannot: offsets in range of the kernels' u32 indices, and
    /// eps and momentum usable.
    fn validate(&self) -> Result<()> {
        ensure_shape!(
            self.c > 0 && self.m > 0,
            OP,
            "{self:?} has no channels or no values per channel"
        );
        let max = u32::MAX as u64;
        ensure_shape!(
            self.x_len() <= max && self.y_len() <= max && self.stat_len() <= max,
            OP,
            "{self:?}: an offset puts the tensor past element 2^32 - 1"
        );
        ensure_shape!(
            self.eps.is_finite() && self.eps > 0.0,
            OP,
            "eps {} must be positive and finite",
            self.eps
        );
        ensure_shape!(
            (0.0..=1.0).contains(&self.momentum),
            OP,
            "momentum {} must be in [0, 1]",
            self.momentum
        );
        Ok(())
    }

    /// Batch statistics need at least two values per channel (PyTorch refuses the same).
    fn validate_train(&self) -> Result<()> {
        self.validate()?;
        ensure_shape!(
            self.m > 1,
            OP,
            "training needs more than 1 value per channel (N*H*W = {}); use evaluation mode",
            self.m
        );
        Ok(())
    }

    fn check(&self, what: &str, view: &View<'_>, need: u64) -> Result<()> {
        super::check_len(OP, what, view, need, self)
    }
}

/// A batch norm -> ReLU that another op (a pool) applies to its input while loading it, so
/// the normalized tensor is never stored: channel c of the input is normalized with the
/// statistics at `stat_offset + c` of `mean` and `var` (the batch statistics in training,
/// the running ones in evaluation) and scaled by this BN's own `gamma[c]` and `beta[c]`,
/// exactly as [`batchnorm_forward`] with ReLU computes it.
#[derive(Clone, Copy, Debug)]
pub struct BnRelu<'a> {
    pub mean: View<'a>,
    pub var: View<'a>,
    pub gamma: View<'a>,
    pub beta: View<'a>,
    pub stat_offset: u32,
    pub eps: f32,
}

impl<'a> BnRelu<'a> {
    /// The fused BN -> ReLU of `p`'s channels (its stat offset and eps).
    pub fn of(
        p: &BatchNormParams,
        mean: View<'a>,
        var: View<'a>,
        gamma: View<'a>,
        beta: View<'a>,
    ) -> Self {
        BnRelu {
            mean,
            var,
            gamma,
            beta,
            stat_offset: p.stat_offset,
            eps: p.eps,
        }
    }

    /// Checks the views against an input of `c` channels; `op` names the caller.
    pub(crate) fn check(&self, op: &'static str, c: u32) -> Result<()> {
        let stats = self.stat_offset as u64 + c as u64;
        let lens = [
            ("mean", self.mean.len, stats),
            ("var", self.var.len, stats),
            ("gamma", self.gamma.len, c as u64),
            ("beta", self.beta.len, c as u64),
        ];
        for (what, have, need) in lens {
            ensure_shape!(
                have >= need,
                op,
                "the fused batch norm's {what} has {have} elements, {c} channels at statistics offset {} need {need}",
                self.stat_offset
            );
        }
        ensure_shape!(
            self.eps.is_finite() && self.eps > 0.0,
            op,
            "the fused batch norm's eps {} must be positive and finite",
            self.eps
        );
        Ok(())
    }

    /// (mean, var, gamma, beta) to bind: the fused BN's, or unused placeholders without one.
    pub(crate) fn views(k: &'a Kernels, bn: &Option<Self>, dtype: DType) -> [View<'a>; 4] {
        match bn {
            Some(b) => [b.mean, b.var, b.gamma, b.beta],
            None => [k.optional(None, dtype); 4],
        }
    }
}

/// The shaders of this op: one workgroup per channel, then many ([`split`]).
pub static SHADERS: [&Shader; 2] = [&SHADER, &split::SHADER];

/// The implementation of a launch: the forced one, else split on GPUs and one workgroup per
/// channel on CPU drivers.
fn choose(policy: &Policy) -> &'static Variant {
    let auto = match policy.class {
        DeviceClass::Gpu => "split",
        DeviceClass::Cpu => PLAIN.name,
    };
    policy.choose(&SHADERS, auto)
}

fn is_split(v: &'static Variant) -> bool {
    split::SHADER.variants.iter().any(|s| std::ptr::eq(s, v))
}

/// Elements of partial sums enough for every launch of [`batchnorm_stats_update`] and
/// [`batchnorm_backward`] over at most `channels` channels, in either implementation
/// (tuning may give any launch the split one): a channel has at most about 512 / channels
/// chunks. A few KiB, so it is kept whatever the policy.
pub fn partials_bound(channels: u32) -> u64 {
    2 * (split::TARGET_WORKGROUPS + channels as u64)
}

/// The tuning key of the backward of `p` with `dtype` activations: entry, element type and
/// shape (offsets left out).
pub fn backward_key(p: &BatchNormParams, dtype: DType) -> String {
    let relu = if p.relu != 0 { " relu" } else { "" };
    format!("batchnorm_backward[{dtype}] c{} m{}{relu}", p.c, p.m)
}

/// The configuration the training statistics run with: forced, else the rule (they are not
/// tuned per launch).
pub fn stats_config(policy: &Policy) -> Config {
    Config::of(choose(policy))
}

/// The configuration the backward of `p` runs with: forced or tuned, else the rule.
pub fn backward_config(k: &Kernels, p: &BatchNormParams, dtype: DType) -> Config {
    k.policy()
        .config_for(OP, &backward_key(p, dtype))
        .unwrap_or_else(|| Config::of(choose(k.policy())))
}

pub static SHADER: Shader = Shader {
    op: OP,
    file: "batchnorm.wgsl",
    source: Source::File(include_str!("../../../shaders/batchnorm.wgsl")),
    entries: &[
        &STATS,
        &AFFINE,
        &UPDATE_RUNNING,
        &FORWARD,
        &BACKWARD,
        &BACKWARD_SUMS,
        &BACKWARD_DX,
    ],
    variants: &[Variant {
        name: PLAIN.name,
        about: "one workgroup of 256 per channel, two passes",
        needs: Needs::Nothing,
        splits: &[Split::Default],
    }],
    choice: "GPUs: split (statistics and backward); CPU drivers: plain",
    dtypes: &[DType::F32, DType::F16],
};

pub static STATS: Entry = Entry::new::<BatchNormParams>(
    &SHADER,
    "batchnorm_stats",
    &[read(1), write_f32(5), write_f32(6)],
    256,
);
pub static AFFINE: Entry = Entry::new::<BatchNormParams>(
    &SHADER,
    "batchnorm_affine",
    &[
        read_f32(2),
        read_f32(3),
        read_f32(7),
        read_f32(8),
        write_f32(15),
    ],
    64,
);
pub static UPDATE_RUNNING: Entry = Entry::new::<BatchNormParams>(
    &SHADER,
    "batchnorm_update_running",
    &[read_f32(7), read_f32(8), write_f32(9), write_f32(10)],
    64,
);
pub static FORWARD: Entry = Entry::new::<BatchNormParams>(
    &SHADER,
    "batchnorm_forward",
    &[
        read(1),
        read_f32(2),
        read_f32(3),
        write(4),
        read_f32(7),
        read_f32(8),
    ],
    64,
);
pub static BACKWARD: Entry = Entry::new::<BatchNormParams>(
    &SHADER,
    "batchnorm_backward",
    &[
        read(1),
        read_f32(7),
        read_f32(8),
        read(11),
        write(12),
        read_f32(16),
        write_f32(17),
    ],
    256,
);

/// The bindings of the backward and of its second half (synchronized batch norm).
const BACKWARD_BINDINGS: &[crate::kernels::Binding] = &[
    read(1),
    read_f32(7),
    read_f32(8),
    read(11),
    write(12),
    read_f32(16),
    write_f32(17),
];
pub static BACKWARD_SUMS: Entry = Entry::new::<BatchNormParams>(
    &SHADER,
    "batchnorm_backward_sums",
    &[
        read(1),
        read_f32(7),
        read_f32(8),
        read(11),
        read_f32(16),
        write_f32(17),
    ],
    256,
);
pub static BACKWARD_DX: Entry =
    Entry::new::<BatchNormParams>(&SHADER, "batchnorm_backward_dx", BACKWARD_BINDINGS, 256);

/// mean and var (biased) of each channel of x, written at `p.stat_offset`.
pub fn batchnorm_stats(
    k: &Kernels,
    p: &BatchNormParams,
    x: View<'_>,
    mean: View<'_>,
    var: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.validate_train()?;
    p.check("x", &x, p.x_len())?;
    p.check("mean", &mean, p.stat_len())?;
    p.check("var", &var, p.stat_len())?;
    let dtype = super::float_dtype(OP, &[&x])?;
    let views = [(1, x), (5, mean), (6, var)];
    let grid = Grid::Workgroups(p.c as u64);
    // Two passes over x: the mean, then the squared deviations.
    let d = k.dispatch(STATS.kernel(dtype), p, &views, grid)?;
    Ok(vec![d.with_cost(3 * p.len(), 2 * dtype.size() * p.len())])
}

/// running_mean and running_var at `p.stat_offset` move `p.momentum` of the way to the
/// batch mean and the unbiased batch variance.
pub fn batchnorm_update_running(
    k: &Kernels,
    p: &BatchNormParams,
    mean: View<'_>,
    var: View<'_>,
    running_mean: View<'_>,
    running_var: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.validate_train()?;
    p.check("mean", &mean, p.stat_len())?;
    p.check("var", &var, p.stat_len())?;
    p.check("running_mean", &running_mean, p.stat_len())?;
    p.check("running_var", &running_var, p.stat_len())?;
    let dtype = super::float_dtype(OP, &[&mean, &var, &running_mean, &running_var])?;
    let views = [(7, mean), (8, var), (9, running_mean), (10, running_var)];
    let grid = Grid::Threads(p.c as u64);
    Ok(vec![k.dispatch(
        UPDATE_RUNNING.kernel(dtype),
        p,
        &views,
        grid,
    )?])
}

/// Training statistics of `p`'s channels of x into mean and var (at `p.stat_offset`), and the
/// running update with them: [`batchnorm_stats`] and [`batchnorm_update_running`] on CPU
/// drivers, or the split passes with their `partials` ([`partials_len`] elements).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_stats_update(
    k: &Kernels,
    p: &BatchNormParams,
    x: View<'_>,
    mean: View<'_>,
    var: View<'_>,
    running_mean: View<'_>,
    running_var: View<'_>,
    partials: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    stats_update_in(
        None,
        k,
        p,
        [x, mean, var, running_mean, running_var],
        partials,
    )
}

/// [`batchnorm_stats_update`] in `config`, or the one the policy gives (`None`); `views` are
/// [x, mean, var, running_mean, running_var].
pub fn stats_update_in(
    config: Option<Config>,
    k: &Kernels,
    p: &BatchNormParams,
    views: [View<'_>; 5],
    partials: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let [x, mean, var, running_mean, running_var] = views;
    let c = config.unwrap_or_else(|| stats_config(k.policy()));
    let v = c.variant;
    let fault = fault::after(k, OP, c, mean, p.stat_offset as u64)?;
    if !is_split(v) {
        let mut all = batchnorm_stats(k, p, x, mean, var)?;
        all.extend(batchnorm_update_running(
            k,
            p,
            mean,
            var,
            running_mean,
            running_var,
        )?);
        all.extend(fault);
        return Ok(all);
    }
    p.validate_train()?;
    p.check("x", &x, p.x_len())?;
    for (what, view) in [
        ("mean", &mean),
        ("var", &var),
        ("running_mean", &running_mean),
        ("running_var", &running_var),
    ] {
        p.check(what, view, p.stat_len())?;
    }
    super::float_dtype(OP, &[&x])?;
    let partials = needs_partials(p, partials)?;
    let mut all =
        split::stats_update(k, v, p, [x, mean, var, running_mean, running_var, partials])?;
    all.extend(fault);
    Ok(all)
}

fn needs_partials<'a>(p: &BatchNormParams, partials: Option<View<'a>>) -> Result<View<'a>> {
    partials.ok_or_else(|| {
        let len = split::BatchNormSplitParams::new(p).partials_len();
        crate::error::Error::shape(
            OP,
            format!("the split implementation needs {len} partial sums"),
        )
    })
}

/// Per channel c of this op, `affine[2c] = gamma / sqrt(var + eps)` and `affine[2c + 1] =
/// beta - mean * affine[2c]`: the normalization as one multiply-add, for a conv that applies
/// BN -> ReLU to its input while loading it (see `conv2d_forward`'s `affine`).
pub fn batchnorm_affine(
    k: &Kernels,
    p: &BatchNormParams,
    mean: View<'_>,
    var: View<'_>,
    gamma: View<'_>,
    beta: View<'_>,
    affine: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.validate()?;
    p.check("mean", &mean, p.stat_len())?;
    p.check("var", &var, p.stat_len())?;
    p.check("gamma", &gamma, p.c as u64)?;
    p.check("beta", &beta, p.c as u64)?;
    p.check("affine", &affine, 2 * p.c as u64)?;
    let dtype = super::float_dtype(OP, &[&mean, &var, &gamma, &beta, &affine])?;
    let views = [(2, gamma), (3, beta), (7, mean), (8, var), (15, affine)];
    let grid = Grid::Threads(p.c as u64);
    Ok(vec![k.dispatch(AFFINE.kernel(dtype), p, &views, grid)?])
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta, written at `p.y_offset`; mean and var
/// are the batch statistics in training, the running ones in evaluation.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward(
    k: &Kernels,
    p: &BatchNormParams,
    x: View<'_>,
    mean: View<'_>,
    var: View<'_>,
    gamma: View<'_>,
    beta: View<'_>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    p.validate()?;
    p.check("x", &x, p.x_len())?;
    p.check("mean", &mean, p.stat_len())?;
    p.check("var", &var, p.stat_len())?;
    p.check("gamma", &gamma, p.c as u64)?;
    p.check("beta", &beta, p.c as u64)?;
    p.check("y", &y, p.y_len())?;
    let dtype = super::float_dtype(OP, &[&x, &y])?;
    let views = [(1, x), (2, gamma), (3, beta), (4, y), (7, mean), (8, var)];
    let grid = Grid::Threads(p.len());
    let d = k.dispatch(FORWARD.kernel(dtype), p, &views, grid)?;
    Ok(vec![d.with_cost(4 * p.len(), 2 * dtype.size() * p.len())])
}

/// Training forward: the batch statistics into mean and var, the running statistics
/// updated with them, then y normalized with them (three dispatches, in order).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(
    k: &Kernels,
    p: &BatchNormParams,
    x: View<'_>,
    mean: View<'_>,
    var: View<'_>,
    running_mean: View<'_>,
    running_var: View<'_>,
    gamma: View<'_>,
    beta: View<'_>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    let mut all = batchnorm_stats(k, p, x, mean, var)?;
    all.extend(batchnorm_update_running(
        k,
        p,
        mean,
        var,
        running_mean,
        running_var,
    )?);
    all.extend(batchnorm_forward(k, p, x, mean, var, gamma, beta, y)?);
    Ok(all)
}

/// Evaluation forward: y normalized with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(
    k: &Kernels,
    p: &BatchNormParams,
    x: View<'_>,
    running_mean: View<'_>,
    running_var: View<'_>,
    gamma: View<'_>,
    beta: View<'_>,
    y: View<'_>,
) -> Result<Vec<Dispatch>> {
    batchnorm_forward(k, p, x, running_mean, running_var, gamma, beta, y)
}

/// Training backward, with mean and var the batch statistics the forward used:
/// dx (at `p.x_offset`) += gamma / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)),
/// dgamma += sum(dy * xhat), dbeta += sum(dy). `partials` as for [`batchnorm_stats_update`].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    k: &Kernels,
    p: &BatchNormParams,
    x: View<'_>,
    dy: View<'_>,
    mean: View<'_>,
    var: View<'_>,
    gamma: View<'_>,
    beta: View<'_>,
    dx: View<'_>,
    dgamma: View<'_>,
    dbeta: View<'_>,
    partials: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let views = [x, dy, mean, var, gamma, beta, dx, dgamma, dbeta];
    backward_in(None, k, p, views, partials)
}

/// `first` and `second` (of `p.c` values each) as one view from `first`'s start, and where
/// `second` starts in it: the backward binds gamma and beta (and their gradients) as one
/// buffer, to stay within 8 storage buffers per stage (WebGPU's default). They must be
/// ranges of one buffer, `second` after `first`, as the parameters of a layout are.
fn one_binding<'a>(
    p: &BatchNormParams,
    (first_name, first): (&str, View<'a>),
    (second_name, second): (&str, View<'a>),
) -> Result<(View<'a>, u32)> {
    ensure_shape!(
        first.buffer == second.buffer && second.offset >= first.offset + p.c as u64,
        OP,
        "{first_name} and {second_name} must be ranges of one buffer, {second_name} after \
         {first_name} (as a layout's parameters are); got elements {}.. and {}.. of {}",
        first.offset,
        second.offset,
        if first.buffer == second.buffer {
            "one buffer"
        } else {
            "two buffers"
        }
    );
    let at = second.offset - first.offset;
    let span = View {
        len: at + second.len,
        ..first
    };
    Ok((span, at as u32))
}

/// A backward launch's bindings, checked: the params with `beta_at`, the element type, and
/// the plain kernel's views.
struct Backward<'a> {
    p: BatchNormParams,
    dtype: DType,
    views: [(u32, View<'a>); 7],
}

/// Checks `views` ([x, dy, mean, var, gamma, beta, dx, dgamma, dbeta]) against `p`.
fn backward_views<'a>(p: &BatchNormParams, views: [View<'a>; 9]) -> Result<Backward<'a>> {
    let [x, dy, mean, var, gamma, beta, dx, dgamma, dbeta] = views;
    p.validate_train()?;
    p.check("beta", &beta, p.c as u64)?;
    p.check("x", &x, p.x_len())?;
    p.check("dy", &dy, p.y_len())?;
    p.check("mean", &mean, p.stat_len())?;
    p.check("var", &var, p.stat_len())?;
    p.check("gamma", &gamma, p.c as u64)?;
    p.check("dx", &dx, p.x_len())?;
    p.check("dgamma", &dgamma, p.c as u64)?;
    p.check("dbeta", &dbeta, p.c as u64)?;
    let dtype = super::float_dtype(OP, &[&x, &dy, &dx])?;
    let (gamma_beta, beta_at) = one_binding(p, ("gamma", gamma), ("beta", beta))?;
    let (dgamma_dbeta, dbeta_at) = one_binding(p, ("dgamma", dgamma), ("dbeta", dbeta))?;
    ensure_shape!(
        beta_at == dbeta_at,
        OP,
        "beta starts {beta_at} after gamma but dbeta {dbeta_at} after dgamma; they must match"
    );
    Ok(Backward {
        p: BatchNormParams { beta_at, ..*p },
        dtype,
        views: [
            (1, x),
            (7, mean),
            (8, var),
            (11, dy),
            (12, dx),
            (16, gamma_beta),
            (17, dgamma_dbeta),
        ],
    })
}

/// [`batchnorm_backward`] in `config`, or the one the policy gives (`None`); `views` are
/// [x, dy, mean, var, gamma, beta, dx, dgamma, dbeta].
pub fn backward_in(
    config: Option<Config>,
    k: &Kernels,
    p: &BatchNormParams,
    views: [View<'_>; 9],
    partials: Option<View<'_>>,
) -> Result<Vec<Dispatch>> {
    let b = backward_views(p, views)?;
    let (p, dtype) = (&b.p, b.dtype);
    let [(_, x), (_, mean), (_, var), (_, dy), (_, dx), (_, gamma_beta), (_, dgamma_dbeta)] =
        b.views;
    let c = config.unwrap_or_else(|| backward_config(k, p, dtype));
    let v = c.variant;
    let fault = fault::after(k, OP, c, dx, p.x_offset as u64)?;
    if is_split(v) {
        let partials = needs_partials(p, partials)?;
        let views = [x, dy, mean, var, gamma_beta, dx, dgamma_dbeta, partials];
        let mut d = split::backward(k, v, p, views)?;
        d.extend(fault);
        return Ok(d);
    }
    let grid = Grid::Workgroups(p.c as u64);
    // x and dy read in both passes, dx read and written.
    let d = k.dispatch(BACKWARD.kernel(dtype), p, &b.views, grid)?;
    let mut d = vec![d.with_cost(14 * p.len(), 6 * dtype.size() * p.len())];
    d.extend(fault);
    Ok(d)
}

/// The backward in two launches for synchronized batch norm: the sums (dgamma += sum(dy *
/// xhat), dbeta += sum(dy)), then dx from the sums that dgamma and dbeta hold by then,
/// which the replicas of a data-parallel run replace by their mean in between (with the
/// local M, the mean of the replicas' sums over M is the global batch's mean). Views as
/// [`batchnorm_backward`]'s; dgamma and dbeta must start at zero.
pub fn batchnorm_backward_synced<'a>(
    k: &Kernels,
    p: &BatchNormParams,
    views: [View<'a>; 9],
) -> Result<[Dispatch; 2]> {
    let b = backward_views(p, views)?;
    let grid = Grid::Workgroups(p.c as u64);
    let n = b.p.len();
    // The sums read no dx.
    let no_dx: Vec<(u32, View<'a>)> = b.views.iter().copied().filter(|v| v.0 != 12).collect();
    let sums = k.dispatch(BACKWARD_SUMS.kernel(b.dtype), &b.p, &no_dx, grid)?;
    let dx = k.dispatch(BACKWARD_DX.kernel(b.dtype), &b.p, &b.views, grid)?;
    let bytes = b.dtype.size() * n;
    Ok([
        sums.with_cost(6 * n, 2 * bytes),
        dx.with_cost(8 * n, 4 * bytes),
    ])
}
