//! The ranks' gradient all-reduce alone, as `Replica` runs it (ring reduce-scatter and
//! all-gather over MPI, host memory): the time per call for the gradients of the d2l
//! network (3.0 MB) and of DenseNet-121 (31.9 MB), and the bytes per second each rank moves.
//!
//! ```sh
//! cargo build --release --features mpi --example allreduce
//! mpirun -np 2 target/release/examples/allreduce
//! ```

use std::time::{Duration, Instant};

use densenet_wgpu::parallel::mpi::MpiTransport;
use densenet_wgpu::parallel::Collective;

fn main() -> anyhow::Result<()> {
    let comm = Collective::new(Box::new(MpiTransport::init(Duration::from_secs(60))?));
    let (n, rank) = (comm.size(), comm.rank());
    for (what, params) in [("d2l", 758_226usize), ("densenet121", 7_978_856)] {
        let mut grads: Vec<f32> = (0..params)
            .map(|i| (i % 97) as f32 * 1e-3 + rank as f32)
            .collect();
        comm.all_reduce_mean(&mut grads)?; // warm-up: pages touched, connections made
        let reps = 10;
        let started = Instant::now();
        for _ in 0..reps {
            comm.all_reduce_mean(&mut grads)?;
        }
        let secs = started.elapsed().as_secs_f64() / reps as f64;
        // Each rank sends (and receives) 2 (n - 1) / n of the buffer.
        let moved = 2.0 * (n - 1) as f64 / n as f64 * 4.0 * params as f64;
        if rank == 0 {
            println!(
                "{what}: {:.1} MB of gradients, {n} ranks: {:.2} ms per all-reduce, {:.2} GB/s per rank",
                4.0 * params as f64 / 1e6,
                1e3 * secs,
                moved / secs / 1e9
            );
        }
    }
    Ok(())
}
