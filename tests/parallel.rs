//! Data parallelism without MPI: the collectives over ranks that are threads of this process
//! (ring all-reduce against its one-process formula, all-gather, broadcast, a silent rank),
//! bucketing, the sharded epoch, and on the GPU the ranks' step (threads with a plan each)
//! against `--simulate-ranks` bit for bit, against one process with one rank, and, with
//! synchronized batch norm, against one process at the global batch.

mod support;

use std::time::Duration;

use densenet_wgpu::data::loader::{Batch, Epoch, Order, Shard};
use densenet_wgpu::gpu::DType;
use densenet_wgpu::model::{DenseNetConfig, GradMark, Init, Plan, SgdConfig, Stem};
use densenet_wgpu::parallel::replica::{buckets, combine_stats, Replica};
use densenet_wgpu::parallel::simulate::Simulated;
use densenet_wgpu::parallel::threads::connected;
use densenet_wgpu::parallel::{ring_mean, Collective};
use support::harness::case;
use support::{gpu, k};

fn main() -> std::process::ExitCode {
    support::harness::run(vec![
        case("ring_all_reduce_is_ring_mean", ring_all_reduce_is_ring_mean),
        case("gather_broadcast_and_sums", gather_broadcast_and_sums),
        case("a_silent_rank_is_an_error", a_silent_rank_is_an_error),
        case("check_same_names_the_rank", check_same_names_the_rank),
        case(
            "buckets_cover_and_close_safely",
            buckets_cover_and_close_safely,
        ),
        case(
            "combined_stats_are_the_global_batchs",
            combined_stats_are_the_global_batchs,
        ),
        case(
            "shards_make_the_global_batches",
            shards_make_the_global_batches,
        ),
        case("ranks_equal_the_simulation", ranks_equal_the_simulation),
        case("one_rank_equals_one_process", one_rank_equals_one_process),
        case(
            "sync_bn_equals_the_global_batch",
            sync_bn_equals_the_global_batch,
        ),
    ])
}

/// Runs `f(rank, collective)` on `n` ranks, each a thread; returns their results in order.
fn on_ranks<T: Send>(n: usize, f: impl Fn(usize, Collective) -> T + Sync) -> Vec<T> {
    let transports = connected(n, Duration::from_secs(120));
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(r, t)| s.spawn(move || f(r, Collective::new(Box::new(t)))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

fn ring_all_reduce_is_ring_mean() {
    for n in 1..=5 {
        for len in [0, 1, 3, 7, 1000] {
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|r| values(r as u64 * 31 + len as u64, len))
                .collect();
            let parts: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
            let want = ring_mean(&parts);
            let got = on_ranks(n, |r, c| {
                let mut v = inputs[r].clone();
                c.all_reduce_mean(&mut v).unwrap();
                v
            });
            for (r, g) in got.iter().enumerate() {
                let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{n} ranks, {len} values: rank {r} differs from ring_mean"
                );
            }
            // And ring_mean is the mean, to rounding.
            for i in 0..len {
                let exact = inputs.iter().map(|v| v[i] as f64).sum::<f64>() / n as f64;
                assert!(
                    (want[i] as f64 - exact).abs() < 1e-6,
                    "{n} ranks, element {i}"
                );
            }
        }
    }
}

fn gather_broadcast_and_sums() {
    let got = on_ranks(3, |r, c| {
        let mine = vec![r as u8; r + 1];
        let all = c.all_gather(&mine).unwrap();
        let mut b = match r {
            0 => b"rank zero says".to_vec(),
            _ => Vec::new(),
        };
        c.broadcast(&mut b).unwrap();
        let sums = c.sum_f64(&[r as f64, 0.5]).unwrap();
        let any = c.any(r == 2).unwrap();
        let none = c.any(false).unwrap();
        (all, b, sums, any, none)
    });
    for (all, b, sums, any, none) in got {
        assert_eq!(all, vec![vec![0u8], vec![1, 1], vec![2, 2, 2]]);
        assert_eq!(b, b"rank zero says");
        assert_eq!(sums, vec![3.0, 1.5]);
        assert!(any && !none);
    }
}

fn a_silent_rank_is_an_error() {
    let mut t = connected(2, Duration::from_millis(300));
    let silent = t.pop().unwrap();
    let c = Collective::new(Box::new(t.pop().unwrap()));
    let mut v = vec![1.0f32; 8];
    let e = c.all_reduce_mean(&mut v).unwrap_err().to_string();
    assert!(
        e.contains("nothing from rank 1") && e.contains("died"),
        "{e}"
    );
    drop(silent);
}

fn check_same_names_the_rank() {
    let got = on_ranks(3, |r, c| {
        let w = if r == 2 {
            vec![1u8, 2, 4]
        } else {
            vec![1u8, 2, 3]
        };
        c.check_same("weights", &w).map_err(|e| e.to_string())
    });
    for g in got {
        let e = g.unwrap_err();
        assert!(e.contains("rank 2's weights differ from rank 0's"), "{e}");
    }
    let same = on_ranks(2, |_, c| c.check_same("weights", &[7, 7]).is_ok());
    assert_eq!(same, vec![true, true]);
}

fn buckets_cover_and_close_safely() {
    // Backward order: the last node's parameters first (some not adjacent), one node
    // without any.
    let m = |end, range| GradMark { end, range };
    let marks = [
        m(3, Some((900, 1000))),
        m(5, None),
        m(8, Some((600, 880))),
        m(9, Some((500, 600))),
        m(12, Some((200, 480))),
        m(15, Some((0, 200))),
    ];
    let written: u64 = marks
        .iter()
        .filter_map(|m| m.range)
        .map(|(a, b)| b - a)
        .sum();
    for min in [1, 150, 350, 10_000] {
        let bs = buckets(&marks, min);
        let mut all: Vec<(u64, u64)> = bs.iter().flat_map(|b| b.ranges.clone()).collect();
        all.sort_unstable();
        assert!(
            all.windows(2).all(|w| w[0].1 <= w[1].0),
            "min {min}: overlap {bs:?}"
        );
        assert_eq!(
            bs.iter().map(|b| b.len()).sum::<u64>(),
            written,
            "min {min}: {bs:?}"
        );
        assert_eq!(bs.last().unwrap().end, 15);
        for (i, b) in bs.iter().enumerate() {
            // Nothing after a bucket's end writes into it.
            for later in marks
                .iter()
                .filter(|x| x.end > b.end)
                .filter_map(|x| x.range)
            {
                let apart = b.ranges.iter().all(|r| later.1 <= r.0 || later.0 >= r.1);
                assert!(apart, "min {min}: bucket {i} {b:?} and {later:?}");
            }
            assert!(
                i + 1 == bs.len() || b.len() >= min,
                "min {min}: bucket {i} {b:?}"
            );
        }
    }
    // Adjacent ranges join: (500, 600) and (600, 880) are one copy.
    assert!(buckets(&marks, 400)
        .iter()
        .any(|b| b.ranges.contains(&(500, 880))));
    // Overlapping nodes (not a plan this crate builds): one bucket of everything.
    let odd = [m(2, Some((0, 10))), m(4, Some((5, 20)))];
    assert_eq!(
        buckets(&odd, 1),
        vec![densenet_wgpu::parallel::replica::Bucket {
            end: 4,
            ranges: vec![(0, 20)]
        }]
    );
}

fn combined_stats_are_the_global_batchs() {
    let (ranks, m, len) = (3, 50, 4);
    let data: Vec<Vec<Vec<f32>>> = (0..ranks)
        .map(|r| {
            (0..len)
                .map(|c| {
                    values((r * 10 + c) as u64, m)
                        .iter()
                        .map(|v| v * 3.0 + c as f32)
                        .collect()
                })
                .collect()
        })
        .collect();
    let parts: Vec<Vec<f32>> = data
        .iter()
        .map(|ch| {
            let mean: Vec<f32> = ch
                .iter()
                .map(|v| (v.iter().map(|&x| x as f64).sum::<f64>() / m as f64) as f32)
                .collect();
            let var = ch.iter().zip(&mean).map(|(v, &mu)| {
                (v.iter()
                    .map(|&x| (x as f64 - mu as f64).powi(2))
                    .sum::<f64>()
                    / m as f64) as f32
            });
            mean.iter().copied().chain(var).collect()
        })
        .collect();
    let got = combine_stats(&parts, len);
    for c in 0..len {
        let all: Vec<f64> = data
            .iter()
            .flat_map(|ch| ch[c].iter().map(|&x| x as f64))
            .collect();
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / all.len() as f64;
        assert!((got[c] as f64 - mean).abs() < 1e-5, "channel {c} mean");
        assert!(
            (got[len + c] as f64 - var).abs() < 1e-5 * var.max(1.0),
            "channel {c} var"
        );
    }
}

fn shards_make_the_global_batches() {
    let (len, batch) = (103, 4);
    for count in [1, 2, 3] {
        for order in [Order::Shuffled(9), Order::Sequential] {
            let whole = Epoch::new(len, batch, order);
            let shards: Vec<Epoch> = (0..count)
                .map(|index| Epoch::sharded(len, batch, order, Shard { index, count }))
                .collect();
            let total: usize = shards.iter().map(|s| s.batches).sum();
            match order {
                // Whole global batches only: the same on every rank.
                Order::Shuffled(_) => {
                    assert!(shards.iter().all(|s| s.batches == len / (batch * count)));
                }
                Order::Sequential => assert_eq!(total, whole.batches),
            }
            assert!(total <= whole.batches);
        }
    }
}

/// A two-block DenseNet-BC, small enough for a software GPU.
fn cfg() -> DenseNetConfig {
    DenseNetConfig {
        in_channels: 2,
        image_size: 8,
        classes: 5,
        stem: Stem::Cifar { channels: 6 },
        blocks: vec![2, 2],
        growth_rate: 3,
        bottleneck: Some(2),
        compression: 0.5,
        conv_bias: true,
        init: Init::KaimingNormal,
        layer_stats: false,
        multi_label: false,
    }
}

const SGD: SgdConfig = SgdConfig {
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 1e-4,
    nesterov: false,
    clip_norm: None,
    adam: None,
};

/// Examples [first, first + n) of step `step`'s global batch, as a batch (C, n, H, W).
fn shard(step: usize, first: usize, n: usize) -> Batch {
    let c = cfg();
    let plane = (c.image_size * c.image_size) as usize;
    let mut x = vec![0f32; c.in_channels as usize * n * plane];
    let mut labels = Vec::new();
    for e in 0..n {
        let ex = values(
            (step * 1000 + first + e) as u64,
            c.in_channels as usize * plane,
        );
        for ch in 0..c.in_channels as usize {
            x[(ch * n + e) * plane..][..plane].copy_from_slice(&ex[ch * plane..][..plane]);
        }
        labels.push(((step * 7 + first + e) % c.classes as usize) as u32);
    }
    Batch {
        x,
        labels,
        count: n,
    }
}

/// What a run leaves: parameters, running statistics and (loss sum, correct).
type Outcome = (Vec<f32>, Vec<f32>, (f64, u64));

fn outcome(plan: &Plan, metrics: (f64, u64)) -> Outcome {
    let g = gpu();
    let mut running = g.read_all::<f32>(&plan.buffers.running_mean).unwrap();
    running.extend(g.read_all::<f32>(&plan.buffers.running_var).unwrap());
    (g.read_all(&plan.buffers.params).unwrap(), running, metrics)
}

fn start(batch: u32, sync_bn: Option<u32>) -> Plan {
    let plan = Plan::train_replica(k(), &cfg(), batch, SGD, DType::F32, sync_bn).unwrap();
    plan.write_params(gpu(), &plan.layout.init_params(Init::KaimingNormal, 5))
        .unwrap();
    plan
}

const STEPS: usize = 3;

/// `n` ranks (threads, a plan each) of batch `batch` for [`STEPS`] steps.
fn ranks(n: usize, batch: u32, sync_bn: bool, bucket_bytes: u64) -> Vec<Outcome> {
    on_ranks(n, |r, comm| {
        let plan = start(batch, sync_bn.then_some(n as u32));
        let mut replica = Replica::new(gpu(), &plan, bucket_bytes).unwrap();
        plan.reset_metrics(gpu());
        for step in 0..STEPS {
            let b = shard(step, r * batch as usize, batch as usize);
            plan.upload(gpu(), &b.x, &b.labels).unwrap();
            replica.step(gpu(), &plan, &comm).unwrap();
        }
        outcome(&plan, plan.read_metrics(gpu()).unwrap())
    })
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn ranks_equal_the_simulation() {
    let (n, batch) = (2, 4);
    // Small buckets: several per step, reduced while the backward runs.
    let got = ranks(n, batch, false, 256);
    let plan = start(batch, None);
    let sim = Simulated::new(gpu(), &plan, n, 256).unwrap();
    assert!(sim.buckets.len() > 2, "{:?}", sim.buckets);
    sim.reset_metrics(gpu());
    for step in 0..STEPS {
        let shards: Vec<Batch> = (0..n)
            .map(|r| shard(step, r * batch as usize, batch as usize))
            .collect();
        sim.step(gpu(), &plan, &shards).unwrap();
    }
    let per_replica = sim.read_metrics(gpu()).unwrap();
    let (params, running, _) = outcome(&plan, (0.0, 0));
    for (r, (p, run, metrics)) in got.iter().enumerate() {
        assert!(
            same_bits(p, &params),
            "rank {r}'s weights differ from the simulation's"
        );
        assert_eq!(
            metrics, &per_replica[r],
            "rank {r}'s loss and accuracy sums"
        );
        // Running statistics: rank 0's, as the simulation keeps them.
        if r == 0 {
            assert!(same_bits(run, &running), "rank 0's running statistics");
        }
    }
}

fn one_rank_equals_one_process() {
    let batch = 6;
    // One rank through the replica's cut submissions, synchronized batch norm's split
    // backward included: the same bits as the plain step.
    let got = ranks(1, batch, true, 512);
    let plan = start(batch, None);
    plan.reset_metrics(gpu());
    for step in 0..STEPS {
        let b = shard(step, 0, batch as usize);
        plan.upload(gpu(), &b.x, &b.labels).unwrap();
        plan.submit_train(gpu()).unwrap();
    }
    let want = outcome(&plan, plan.read_metrics(gpu()).unwrap());
    assert!(same_bits(&got[0].0, &want.0), "weights");
    assert!(same_bits(&got[0].1, &want.1), "running statistics");
    assert_eq!(got[0].2, want.2, "loss and accuracy sums");
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel(got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs() / scale)
        .fold(0.0, f64::max)
}

fn sync_bn_equals_the_global_batch() {
    let (n, batch) = (2, 4);
    let got = ranks(n, batch, true, 1 << 20);
    let plan = start(n as u32 * batch, None);
    plan.reset_metrics(gpu());
    for step in 0..STEPS {
        let b = shard(step, 0, n * batch as usize);
        plan.upload(gpu(), &b.x, &b.labels).unwrap();
        plan.submit_train(gpu()).unwrap();
    }
    let want = outcome(&plan, plan.read_metrics(gpu()).unwrap());
    for (r, (p, run, _)) in got.iter().enumerate() {
        assert!(
            rel(p, &want.0) < 1e-5,
            "rank {r} weights: {:e}",
            rel(p, &want.0)
        );
        assert!(
            rel(run, &want.1) < 1e-5,
            "rank {r} running: {:e}",
            rel(run, &want.1)
        );
    }
    // The ranks' sums add up to the global batch's.
    let loss: f64 = got.iter().map(|o| o.2 .0).sum();
    let correct: u64 = got.iter().map(|o| o.2 .1).sum();
    assert!(
        (loss - want.2 .0).abs() < 1e-5 * want.2 .0.abs(),
        "{loss} vs {}",
        want.2 .0
    );
    assert_eq!(correct, want.2 .1);
}
