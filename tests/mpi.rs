//! Data parallelism under a real MPI launcher (a build with `--features mpi`; CI runs
//! `cargo test --release --features mpi --test mpi` with Open MPI): `mpirun -np 2` of the
//! binary on the software GPU against `--simulate-ranks 2` bit for bit, synchronized batch
//! norm against one process at the global batch, an interrupted run resumed against an
//! uninterrupted one, and a killed rank ending the job.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::report::{read_metrics, EpochMetrics};

const BIN: &str = env!("CARGO_BIN_EXE_densenet-wgpu");

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `train` of the tiny preset on synthetic data with `extra` flags, into `out`.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--preset", "tiny", "--limit-test", "256", "--out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Tuning is tested in tests/tune.rs: these runs launch the policy's kernels at once
/// (rank 0's tuning would otherwise keep the others waiting, against `--rank-timeout`).
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.env("DENSENET_TUNE", "off");
    let n = ranks.to_string();
    let launch = [
        "--allow-run-as-root",
        "--oversubscribe",
        "-x",
        "DENSENET_TUNE",
        "-np",
        &n,
    ];
    c.args(launch).arg(BIN).args(args);
    c
}

fn one_process(args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.env("DENSENET_TUNE", "off").args(args);
    c
}

fn ok(o: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{what} failed:\n{text}");
    text
}

/// The metrics without the wall-clock ones.
fn metrics(out: &Path) -> Vec<EpochMetrics> {
    read_metrics(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|m| EpochMetrics {
            seconds: 0.0,
            images_per_sec: 0.0,
            ..m
        })
        .collect()
}

fn tensors(out: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let mut t: Vec<(String, Vec<f32>)> = ck.tensors.into_iter().map(|(k, v)| (k, v.1)).collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn same_bits(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        let same =
            va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "{na} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn two_ranks_equal_simulated_ranks() {
    let flags = [
        "--epochs",
        "2",
        "--limit-train",
        "512",
        "--batch-size",
        "32",
    ];
    let (ranks, sim) = (out_dir("ranks"), out_dir("sim"));
    let text = ok(
        mpirun(2, &train_args(&ranks, &flags)).output().unwrap(),
        "mpirun",
    );
    assert!(
        text.contains("2 ranks x batch 32 = global batch 64"),
        "{text}"
    );
    assert!(text.contains("all-reduce"), "{text}");
    let mut sim_flags = flags.to_vec();
    sim_flags.extend(["--simulate-ranks", "2"]);
    let args = train_args(&sim, &sim_flags);
    ok(one_process(&args).output().unwrap(), "--simulate-ranks 2");
    assert_eq!(metrics(&ranks), metrics(&sim));
    same_bits(&ranks, &sim);
}

#[test]
fn sync_bn_equals_one_process_at_the_global_batch() {
    // Three steps of a global batch of 64.
    let limit = ["--epochs", "1", "--limit-train", "192"];
    let (ranks, one) = (out_dir("syncbn"), out_dir("global"));
    let mut f = limit.to_vec();
    f.extend(["--batch-size", "32", "--sync-bn"]);
    ok(
        mpirun(2, &train_args(&ranks, &f)).output().unwrap(),
        "mpirun --sync-bn",
    );
    let mut g = limit.to_vec();
    g.extend(["--batch-size", "64"]);
    ok(
        one_process(&train_args(&one, &g)).output().unwrap(),
        "batch 64",
    );
    for ((name, a), (_, b)) in tensors(&ranks).iter().zip(&tensors(&one)) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: {worst:e}");
    }
    let (m2, m1) = (metrics(&ranks), metrics(&one));
    assert!((m2[0].train_loss - m1[0].train_loss).abs() < 1e-5 * m1[0].train_loss);
}

/// The ranks mpirun started (its children), by rank.
fn ranks_of(mpirun: &Child) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1));
        if ppid != Some(&mpirun.id().to_string()) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let Some(r) = rank {
            found.push((r, pid));
        }
    }
    found.sort_unstable();
    found
}

/// Starts `mpirun` of `args` and waits for the first epoch's checkpoint.
fn start_and_wait_for_epoch(args: &[String], out: &Path) -> Child {
    let child = mpirun(2, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !out.join("checkpoint.safetensors").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no epoch in 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn signal(pid: u32, sig: &str) {
    let s = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn interrupted_two_rank_run_resumed_equals_uninterrupted() {
    let flags = [
        "--epochs",
        "3",
        "--limit-train",
        "1536",
        "--batch-size",
        "32",
    ];
    let (whole, cut) = (out_dir("whole"), out_dir("cut"));
    ok(
        mpirun(2, &train_args(&whole, &flags)).output().unwrap(),
        "uninterrupted",
    );
    let child = start_and_wait_for_epoch(&train_args(&cut, &flags), &cut);
    // Ctrl-C reaches one rank only: both stop at the same step.
    let ranks = ranks_of(&child);
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    signal(ranks[1].1, "-INT");
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "the run was not interrupted:\n{text}");
    assert!(text.contains("interrupted in epoch"), "{text}");
    let ck = cut.join("checkpoint.safetensors");
    let mut resume = flags.to_vec();
    let ck_arg = ck.display().to_string();
    resume.extend(["--resume", &ck_arg]);
    ok(
        mpirun(2, &train_args(&cut, &resume)).output().unwrap(),
        "resumed",
    );
    assert_eq!(metrics(&whole), metrics(&cut));
    same_bits(&whole, &cut);
    // Another rank count cannot take it on.
    let o = one_process(&train_args(&out_dir("other"), &resume))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && text.contains("trained on 2 ranks"),
        "{text}"
    );
}

#[test]
fn a_killed_rank_ends_the_job() {
    let flags = [
        "--epochs",
        "50",
        "--limit-train",
        "1024",
        "--batch-size",
        "32",
        "--rank-timeout",
        "120",
    ];
    let out = out_dir("killed");
    let mut child = start_and_wait_for_epoch(&train_args(&out, &flags), &out);
    let ranks = ranks_of(&child);
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    signal(ranks[1].1, "-KILL");
    let killed = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "rank 0 still runs 60 s on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the job ended {:.1} s after rank 1 was killed",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_hung_rank_times_out() {
    // A rank that stops answering without dying (here: stopped) is what mpirun cannot see:
    // the others give up after --rank-timeout with a line saying so.
    let flags = [
        "--epochs",
        "50",
        "--limit-train",
        "1024",
        "--batch-size",
        "32",
        "--rank-timeout",
        "30",
    ];
    let out = out_dir("hung");
    let child = start_and_wait_for_epoch(&train_args(&out, &flags), &out);
    let ranks = ranks_of(&child);
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    signal(ranks[1].1, "-STOP");
    let stopped = Instant::now();
    let o = child.wait_with_output().unwrap();
    let secs = stopped.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    let _ = Command::new("kill")
        .args(["-KILL", &ranks[1].1.to_string()])
        .status();
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("rank 0: no answer from rank 1 for 30 s"),
        "{text}"
    );
    assert!(
        secs < 60.0,
        "the job ended {secs:.0} s after rank 1 stopped"
    );
}
