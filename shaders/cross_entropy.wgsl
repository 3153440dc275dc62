// cross_entropy.wgsl: softmax cross-entropy (mean over the batch) fused with its gradient,
// plus the number of correct predictions.
//
//   loss_n    = sum_o t[o] (logsumexp(logits[n, :]) - logits[n, o])   the loss is mean(loss_n),
//               t = (1 - e) onehot(label[n]) + e / classes (label smoothing e; 0: plain)
//   loss_sum += sum over valid n of loss_n      (the host divides by the samples it counted)
//   dlogits  += (softmax(logits[n, :]) - t) / valid                     (gradient of the mean,
//               times the loss scale of scale_state with loss_scaled: f16 training)
//   correct  += count of valid n with argmax(logits[n, :]) == label[n]   (first maximum wins)
//
// A label >= classes (IGNORE = 0xffffffff by convention) marks a padding sample: it adds
// nothing and is not counted in the mean. Everything accumulates, so the host can sum the
// loss and the accuracy of many steps (batches of unequal valid counts included) on the GPU
// and read them once.
//
// Multi-label (sigmoid_cross_entropy, torch's BCEWithLogitsLoss with pos_weight, mean over
// samples and labels): labels holds N x classes targets (0 or 1; a row starting with IGNORE
// is padding), and for target y of logit z with the label's weight w = pos_weight[o]
//   loss_n   = mean over o of  w y softplus(-z) + (1 - y) softplus(z)
//   dlogits += (sigmoid(z) (w y + 1 - y) - w y) / (valid * classes)
//   correct += count of valid n whose every label is predicted right (z > 0 for y = 1)
//
// Entry points (params at binding 0, a CrossEntropyParams uniform):
//   softmax_cross_entropy   logits(1) labels(2) scale_state(6) -> dlogits(3) loss_sum(4)
//                                                                  correct(5)
//   sigmoid_cross_entropy   logits(1) labels(2) scale_state(6) pos_weight(7)
//                                                       -> dlogits(3) loss_sum(4) correct(5)
// Geometry: ONE workgroup of 256 invocations; invocation t handles samples t, t + 256, ...
// The valid count is reduced first, so the gradient can be scaled in the same pass.

struct CrossEntropyParams {
    n: u32,
    classes: u32,
    loss_scaled: u32,
    smoothing: f32,
}

@group(0) @binding(0) var<uniform> p: CrossEntropyParams;
@group(0) @binding(1) var<storage, read> logits: array<act>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<act>;
@group(0) @binding(4) var<storage, read_write> loss_sum: array<f32>;
@group(0) @binding(5) var<storage, read_write> correct: array<u32>;
@group(0) @binding(6) var<storage, read> scale_state: array<u32>;
@group(0) @binding(7) var<storage, read> pos_weight: array<f32>;

const WG: u32 = 256u;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;

fn reduce(lid: u32) {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            red_f[lid] += red_f[lid + stride];
            red_u[lid] += red_u[lid + stride];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn softmax_cross_entropy(@builtin(local_invocation_index) lid: u32) {
    var valid = 0u;
    for (var n = lid; n < p.n; n += WG) {
        valid += u32(labels[n] < p.classes);
    }
    red_f[lid] = 0.0;
    red_u[lid] = valid;
    reduce(lid);
    let total_valid = red_u[0];
    var scale = 1.0 / f32(max(total_valid, 1u));
    if p.loss_scaled != 0u {
        scale *= bitcast<f32>(scale_state[0]);
    }
    workgroupBarrier();

    var losses = 0.0;
    var hits = 0u;
    for (var n = lid; n < p.n; n += WG) {
        let label = labels[n];
        if label >= p.classes {
            continue;
        }
        let row = n * p.classes;
        var best = f32(logits[row]);
        var arg = 0u;
        for (var o = 1u; o < p.classes; o++) {
            let v = f32(logits[row + o]);
            if v > best {
                best = v;
                arg = o;
            }
        }
        var sum = 0.0;
        var total = 0.0;
        for (var o = 0u; o < p.classes; o++) {
            let v = f32(logits[row + o]);
            sum += exp(v - best);
            total += v;
        }
        let lse = best + log(sum);
        let e = p.smoothing;
        let spread = e / f32(p.classes);
        // sum_o t[o] (lse - z[o]) with t = (1 - e) onehot + e / classes.
        losses += (1.0 - e) * (lse - f32(logits[row + label])) + e * lse - spread * total;
        hits += u32(arg == label);
        for (var o = 0u; o < p.classes; o++) {
            let prob = exp(f32(logits[row + o]) - lse);
            let goal = select(0.0, 1.0 - e, o == label) + spread;
            dlogits[row + o] = act(f32(dlogits[row + o]) + (prob - goal) * scale);
        }
    }
    red_f[lid] = losses;
    red_u[lid] = hits;
    reduce(lid);
    if lid == 0u {
        loss_sum[0] += red_f[0];
        correct[0] += red_u[0];
    }
}

// log(1 + exp(z)) without overflow.
fn softplus(z: f32) -> f32 {
    return max(z, 0.0) + log(1.0 + exp(-abs(z)));
}

@compute @workgroup_size(256)
fn sigmoid_cross_entropy(@builtin(local_invocation_index) lid: u32) {
    var valid = 0u;
    for (var n = lid; n < p.n; n += WG) {
        valid += u32(labels[n * p.classes] != 0xffffffffu);
    }
    red_f[lid] = 0.0;
    red_u[lid] = valid;
    reduce(lid);
    let total_valid = red_u[0];
    var scale = 1.0 / (f32(max(total_valid, 1u)) * f32(p.classes));
    if p.loss_scaled != 0u {
        scale *= bitcast<f32>(scale_state[0]);
    }
    workgroupBarrier();

    var losses = 0.0;
    var hits = 0u;
    for (var n = lid; n < p.n; n += WG) {
        let row = n * p.classes;
        if labels[row] == 0xffffffffu {
            continue;
        }
        var row_loss = 0.0;
        var right = true;
        for (var o = 0u; o < p.classes; o++) {
            let z = f32(logits[row + o]);
            let y = f32(labels[row + o] != 0u);
            let w = pos_weight[o];
            row_loss += w * y * softplus(-z) + (1.0 - y) * softplus(z);
            let s = 1.0 / (1.0 + exp(-z));
            let g = s * (w * y + 1.0 - y) - w * y;
            dlogits[row + o] = act(f32(dlogits[row + o]) + g * scale);
            right = right && ((z > 0.0) == (y > 0.5));
        }
        losses += row_loss / f32(p.classes);
        hits += u32(right);
    }
    red_f[lid] = losses;
    red_u[lid] = hits;
    reduce(lid);
    if lid == 0u {
        loss_sum[0] += red_f[0];
        correct[0] += red_u[0];
    }
}
