//! densenet-wgpu in a browser: the library's kernels, plan and training loop on the page's
//! WebGPU, driven by `web/www/app.js` through wasm-bindgen.
//!
//! [`Engine`] is the page's one object. Every method that waits for the GPU returns a
//! Promise (the browser's event loop runs while it waits); a method called while another
//! is still running is refused with a one-line error rather than interleaved. Results are
//! JSON strings, errors one-line `Error`s; the page measures time itself.

mod data;
mod run;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use densenet_wgpu::checkpoint::Checkpoint;
use densenet_wgpu::kernels::DeviceClass;
use densenet_wgpu::{wgpu, Gpu, Kernels, Policy};
use js_sys::{Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use data::{Data, Limits, Source};
use run::{Choice, Run};

/// The page's state: the device, the data chosen and the run.
struct State {
    k: Kernels,
    source: Option<Source>,
    data: Option<Data>,
    run: Option<Run>,
    limits: Limits,
}

/// The page's handle on the library (see the module's documentation).
#[wasm_bindgen]
pub struct Engine {
    state: Rc<RefCell<State>>,
    /// Validation errors the browser reports asynchronously (a bad dispatch, out of memory).
    errors: Arc<Mutex<Vec<String>>>,
}

fn js(e: anyhow::Error) -> JsError {
    JsError::new(&format!("{e:#}"))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v)?)
}

/// The adapter's facts the page shows and acts on.
#[derive(serde::Serialize)]
struct AdapterFacts {
    name: String,
    backend: String,
    software: bool,
    f16: bool,
    subgroups: bool,
    timestamps: bool,
    max_storage_binding_mib: u64,
    max_workgroup_storage_kib: u32,
    max_invocations: u32,
    kernels: String,
}

#[wasm_bindgen]
impl Engine {
    /// Opens the browser's WebGPU adapter; `limits` is "adapter" (its own) or "webgpu" (the
    /// defaults every WebGPU device has); `kernels` as the CLI's --kernels ("auto": each
    /// op's own rule for this adapter).
    pub async fn create(limits: String, kernels: String) -> Result<Engine, JsError> {
        console_error_panic_hook::set_once();
        let limits = match limits.as_str() {
            "adapter" => None,
            "webgpu" => Some(wgpu::Limits::default()),
            other => {
                return Err(JsError::new(&format!(
                    "limits {other:?}: adapter or webgpu"
                )))
            }
        };
        let gpu = Gpu::browser(limits).await.map_err(|e| js(e.into()))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        gpu.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                sink.lock().expect("error list").push(e.to_string());
            }));
        let class = DeviceClass::of(&gpu);
        let policy = Policy::parse(&kernels, class, densenet_wgpu::ops::SHADERS)
            .map_err(|e| js(e.into()))?;
        // The library shares its device by Arc (natively across threads); a page has one.
        #[allow(clippy::arc_with_non_send_sync)]
        let k = Kernels::new(Arc::new(gpu), policy);
        let state = State {
            k,
            source: None,
            data: None,
            run: None,
            limits: Limits::default(),
        };
        Ok(Engine {
            state: Rc::new(RefCell::new(state)),
            errors,
        })
    }

    /// The adapter as JSON: name, whether it is a software one, f16, limits, kernel policy.
    pub fn adapter(&self) -> Result<String, JsError> {
        let s = self.state.try_borrow().map_err(|_| busy())?;
        let gpu = s.k.gpu();
        let f = gpu.features;
        let facts = AdapterFacts {
            name: gpu.info.name.clone(),
            backend: format!("{:?}", gpu.info.backend),
            software: gpu.is_software(),
            f16: run::has_f16(&s.k),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_binding_mib: gpu.limits.max_storage_buffer_binding_size >> 20,
            max_workgroup_storage_kib: gpu.limits.max_compute_workgroup_storage_size >> 10,
            max_invocations: gpu.limits.max_compute_invocations_per_workgroup,
            kernels: s.k.policy().origin.clone(),
        };
        json(&facts).map_err(js)
    }

    /// Uses only the first `train` training and `test` test examples of the data chosen
    /// from now on (0: all), as the CLI's --limit-train and --limit-test.
    pub fn limit(&self, train: u32, test: u32) -> Result<(), JsError> {
        let mut s = self.state.try_borrow_mut().map_err(|_| busy())?;
        let some = |n: u32| (n > 0).then_some(n as usize);
        s.limits = Limits {
            train: some(train),
            test: some(test),
        };
        Ok(())
    }

    /// Chooses the built-in synthetic set (the CLI's default data) drawn from `seed`.
    pub fn use_synthetic(&self, seed: u32) -> Result<(), JsError> {
        self.set_source(data::synthetic(seed as u64))
    }

    /// Chooses MNIST or Fashion-MNIST (`kind`: "mnist" or "fashion-mnist") from its four
    /// IDX files (`names[i]` the name of `files[i]`, gzipped or not).
    pub fn use_idx(
        &self,
        kind: String,
        names: Vec<String>,
        files: Vec<Uint8Array>,
    ) -> Result<(), JsError> {
        let files = names.into_iter().zip(files.iter().map(|f| f.to_vec()));
        self.set_source(data::idx_files(&kind, files.collect()).map_err(js)?)
    }

    /// Chooses a dropped folder: each file's path below the drop (`webkitRelativePath`) and
    /// its bytes; class folders as the CLI's `--dataset folder` reads them.
    pub fn use_folder(&self, paths: Vec<String>, files: Vec<Uint8Array>) -> Result<(), JsError> {
        let files = paths.into_iter().zip(files.iter().map(|f| f.to_vec()));
        self.set_source(Source::Folder(files.collect()))
    }

    fn set_source(&self, source: Source) -> Result<(), JsError> {
        let mut s = self.state.try_borrow_mut().map_err(|_| busy())?;
        s.source = Some(source);
        s.data = None;
        Ok(())
    }

    /// Starts a fresh run; `choice` is JSON: {preset, batch_size?, epochs?, lr?, seed?,
    /// precision?}. Returns the run's summary with the data's.
    pub fn start(&self, choice: String) -> Result<String, JsError> {
        let choice: Choice =
            serde_json::from_str(&choice).map_err(|e| js(anyhow!("run settings: {e}")))?;
        let mut s = self.state.try_borrow_mut().map_err(|_| busy())?;
        let s = &mut *s;
        let source = s
            .source
            .as_ref()
            .ok_or_else(|| js(anyhow!("choose the data first")))?;
        let size = run::input_size(&choice.preset, source.kind()).map_err(js)?;
        let data = source.load(size, choice.seed, s.limits).map_err(js)?;
        s.run = None;
        let run = Run::start(&s.k, &data, &choice).map_err(js)?;
        let summary = summary(&run, &data);
        s.run = Some(run);
        s.data = Some(data);
        self.check_device()?;
        Ok(summary)
    }

    /// Loads a checkpoint file (the CLI's or the page's) to evaluate, predict with or train
    /// on; the data must be what it was trained on (a synthetic run's seed is its own).
    pub fn load_checkpoint(&self, bytes: Vec<u8>, name: String) -> Result<String, JsError> {
        let ck = Checkpoint::from_bytes(&bytes, &name).map_err(js)?;
        let mut s = self.state.try_borrow_mut().map_err(|_| busy())?;
        let s = &mut *s;
        if let (Some(Source::Ready(kind, _)), true) = (&s.source, ck.dataset.name() == "synthetic")
        {
            if kind.name() == "synthetic" {
                s.source = Some(data::synthetic(ck.recipe.seed));
            }
        }
        let source = s.source.as_ref().ok_or_else(|| {
            js(anyhow!(
                "{name}: choose the data it was trained on ({}) first",
                ck.dataset.name()
            ))
        })?;
        if source.kind() != ck.dataset {
            return Err(js(anyhow!(
                "{name} was trained on {}, but the chosen data is {}",
                ck.dataset.name(),
                source.kind().name()
            )));
        }
        let data = source
            .load(
                ck.recipe.augment.load_size(ck.config.image_size),
                ck.recipe.seed,
                s.limits,
            )
            .map_err(js)?;
        s.run = None;
        let run = Run::resume(&s.k, &ck, &data).map_err(js)?;
        let summary = summary(&run, &data);
        s.run = Some(run);
        s.data = Some(data);
        self.check_device()?;
        Ok(summary)
    }

    /// Trains up to `steps` steps (stopping at the epoch's end); resolves to the progress
    /// as JSON.
    pub fn train(&self, steps: u32) -> Promise {
        self.task(move |s| {
            Box::pin(async move {
                let data = s.data.as_ref().ok_or_else(no_run)?;
                let run = s.run.as_mut().ok_or_else(no_run)?;
                let p = run.train(&s.k, &data.train, steps as usize).await?;
                Ok(JsValue::from_str(&json(&p)?))
            })
        })
    }

    /// Evaluates the test set; resolves to JSON (loss, accuracy, per-class accuracy, and
    /// with `logits` every example's logits).
    pub fn evaluate(&self, logits: bool) -> Promise {
        self.task(move |s| {
            Box::pin(async move {
                let data = s.data.as_ref().ok_or_else(no_run)?;
                let run = s.run.as_mut().ok_or_else(no_run)?;
                let e = run.evaluate(&s.k, &data.test, logits).await?;
                Ok(JsValue::from_str(&json(&e)?))
            })
        })
    }

    /// Classifies an image file's bytes (PNG or JPEG); resolves to JSON, best class first.
    pub fn predict_file(&self, bytes: Vec<u8>, name: String) -> Promise {
        self.task(move |s| {
            Box::pin(async move {
                let img = image::load_from_memory(&bytes)
                    .map_err(|e| anyhow!("{name}: not a PNG or JPEG image ({e})"))?;
                let run = s.run.as_mut().ok_or_else(no_run)?;
                let p = run.predict(&s.k, &img).await?;
                Ok(JsValue::from_str(&json(&p)?))
            })
        })
    }

    /// Classifies RGBA pixels (a canvas's `getImageData`); resolves to JSON.
    pub fn predict_pixels(&self, rgba: Vec<u8>, width: u32, height: u32) -> Promise {
        self.task(move |s| {
            Box::pin(async move {
                let img = image::RgbaImage::from_raw(width, height, rgba).ok_or_else(|| {
                    anyhow!("{width}x{height} pixels need {} bytes", width * height * 4)
                })?;
                let run = s.run.as_mut().ok_or_else(no_run)?;
                let p = run
                    .predict(&s.k, &image::DynamicImage::ImageRgba8(img))
                    .await?;
                Ok(JsValue::from_str(&json(&p)?))
            })
        })
    }

    /// The run as a checkpoint file (safetensors, what `densenet-wgpu eval` reads);
    /// resolves to a Uint8Array.
    pub fn checkpoint(&self) -> Promise {
        self.task(move |s| {
            Box::pin(async move {
                let run = s.run.as_ref().ok_or_else(no_run)?;
                let bytes = run.checkpoint(&s.k).await?;
                Ok(Uint8Array::from(&bytes[..]).into())
            })
        })
    }
}

type Task<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<JsValue>> + 'a>>;

impl Engine {
    /// Runs `f` on the state as a Promise; refused while another task holds the state, and
    /// failed when the browser reported a device error meanwhile.
    fn task(&self, f: impl for<'a> FnOnce(&'a mut State) -> Task<'a> + 'static) -> Promise {
        let state = self.state.clone();
        let errors = self.errors.clone();
        // The borrow is held across the task's awaits on purpose: it is what marks the state
        // busy, so a second call is refused (try_borrow_mut) instead of interleaving.
        #[allow(clippy::await_holding_refcell_ref)]
        future_to_promise(async move {
            let mut guard = state.try_borrow_mut().map_err(|_| JsValue::from(busy()))?;
            let out = f(&mut guard).await;
            drop(guard);
            let reported = std::mem::take(&mut *errors.lock().expect("error list"));
            if let Some(e) = reported.first() {
                return Err(JsError::new(&format!("the GPU reported: {e}")).into());
            }
            out.map_err(|e| JsError::new(&format!("{e:#}")).into())
        })
    }

    fn check_device(&self) -> Result<(), JsError> {
        let reported = std::mem::take(&mut *self.errors.lock().expect("error list"));
        match reported.first() {
            Some(e) => Err(JsError::new(&format!("the GPU reported: {e}"))),
            None => Ok(()),
        }
    }
}

fn busy() -> JsError {
    JsError::new("busy: the last step, evaluation or prediction has not finished")
}

fn no_run() -> anyhow::Error {
    anyhow!("no run yet: start one or load a checkpoint")
}

/// A run and its data as the page shows them.
fn summary(run: &Run, data: &Data) -> String {
    let plan = &run.plan;
    let v = serde_json::json!({
        "network": run.name,
        "parameters": plan.layout.parameter_count(),
        "batch_size": run.recipe.batch_size,
        "epochs": run.recipe.epochs,
        "epochs_done": run.epoch,
        "steps_done": run.step,
        "lr": run.recipe.lr,
        "precision": plan.precision().to_string(),
        "memory_mib": plan.memory.report.total() as f64 / (1u64 << 20) as f64,
        "image_size": plan.cfg.image_size,
        "data": data.summary(),
    });
    v.to_string()
}
