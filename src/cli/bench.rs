//! `graft bench`: graft's side of the peer benchmarks in `bench/` (images/s, CPU/wall, RSS).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};
use clap::{Args, ValueEnum};

use graft::rng::{random_tensor, run_rng};
use graft::util::{peak_rss_bytes, process_cpu_seconds};

use super::BackboneArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchWhat {
    /// Forward pass with the ImageNet top (inference).
    Forward,
    /// One fine-tuning step: forward + backward + AdamW update of every layer, BatchNorm
    /// frozen, a 10-class top.
    TrainStep,
    /// Text embeddings of a CLIP / SigLIP model: `--batch-size` prompts per iteration
    /// (tokenizing included), `--iters` iterations of different prompts.
    Text,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value = "forward")]
    pub what: BenchWhat,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,

    /// Timed iterations (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,

    /// train-step: run the backbone with burn's autodiff over its modules instead of what
    /// fine-tuning uses on the CPU (the fused kernels with their own backward), to compare.
    #[arg(long)]
    pub burn_autodiff: bool,

    /// train-step: train only the top N layer groups (the others frozen, as in a fine-tuning
    /// stage); default all of them.
    #[arg(long, value_name = "N")]
    pub train_groups: Option<usize>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// After the timed run, run the iterations again timing each layer type of the fused CPU
    /// network (forward; train-step: forward and backward), and print where the CPU time goes
    /// (to stderr).
    #[arg(long)]
    pub profile: bool,
}

/// Whether `--backbone` names a CLIP / SigLIP repository (a folder, or `hf:` outside the
/// registry) rather than a registry backbone.
fn contrastive(args: &BenchArgs) -> bool {
    let name = &args.backbone.backbone;
    graft::clip::ContrastiveConfig::is_repository(std::path::Path::new(name))
        || (name.starts_with("hf:") && graft::backbone::find(name).is_none())
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.what {
        BenchWhat::TrainStep => return train_step(args),
        BenchWhat::Text => return text(args),
        BenchWhat::Forward => {}
    }
    // A CLIP / SigLIP image tower is timed on its image embeddings; weights without a
    // classifier (DINOv2) on their pooled features.
    let (with_top, backbone) = if contrastive(&args) {
        let model = super::zero_shot::open_model(&args.backbone.backbone)?;
        (false, model.image)
    } else {
        let with_top = args.backbone.info()?.arch.num_classes() > 0;
        (with_top, args.backbone.load(with_top)?)
    };
    let r = backbone.config.resolution;
    let device = graft::backend::device();
    let input = random_tensor::<4>(
        [args.batch_size, 3, r, r],
        Distribution::Uniform(-1.0, 1.0),
        &mut run_rng(0, 0),
        &device,
    )
    .into_data();
    // Times the forward pass of a batch that is ready (as the peers' scripts do), not the
    // making of the batch: each call gets its own tensor, built before the clock starts, as the
    // extraction pipeline hands over a fresh batch (a shared one would be copied out first).
    let run_once = || {
        let batch = Tensor::<4>::from_data(input.clone(), &device);
        let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
        let output = match with_top {
            // cannot fail: loaded with its top (Backbone::load requires the classifier's tensors)
            true => backbone.logits(batch).expect("loaded with top"),
            false => backbone.features(batch),
        };
        // Reading the result forces any lazy backend to finish the work.
        let _ = output.into_data();
        (t0.elapsed().as_secs_f64(), process_cpu_seconds() - cpu0)
    };
    run_once();
    let (mut wall, mut cpu) = (0.0, 0.0);
    for _ in 0..args.iters {
        let (w, c) = run_once();
        wall += w;
        cpu += c;
    }
    print_result(
        &args,
        "forward",
        "forward",
        &args.backbone.backbone,
        r,
        wall,
        cpu,
    );
    if args.profile {
        let profiled = backbone.fused().is_some() && backbone.net.as_mbconv().is_some();
        print_layer_profile(profiled, || {
            for _ in 0..args.iters {
                run_once();
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench text`: prompts through a CLIP / SigLIP text tower, tokenizing included, each
/// iteration new prompts (class names in CLIP's templates), as many as `--batch-size`.
fn text(args: BenchArgs) -> Result<ExitCode> {
    let model = super::zero_shot::open_model(&args.backbone.backbone)?;
    let prompt = |i: usize| {
        let template = graft::clip::IMAGENET_TEMPLATES[i % graft::clip::IMAGENET_TEMPLATES.len()];
        template.replace("{}", &format!("object number {i}"))
    };
    let batches: Vec<Vec<String>> = (0..=args.iters)
        .map(|it| {
            (0..args.batch_size)
                .map(|j| prompt(it * args.batch_size + j))
                .collect()
        })
        .collect();
    let run_once = |prompts: &[String]| -> Result<(f64, f64)> {
        let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
        let embeddings = model.text_embeddings(prompts)?;
        assert_eq!(embeddings.len(), prompts.len());
        Ok((t0.elapsed().as_secs_f64(), process_cpu_seconds() - cpu0))
    };
    run_once(&batches[0])?;
    let (mut wall, mut cpu) = (0.0, 0.0);
    for prompts in &batches[1..] {
        let (w, c) = run_once(prompts)?;
        wall += w;
        cpu += c;
    }
    print_result(
        &args,
        "text",
        "text embeddings",
        &args.backbone.backbone,
        0,
        wall,
        cpu,
    );
    Ok(ExitCode::SUCCESS)
}

/// Run `work` with per-layer timing on and print the CPU time per layer type of the fused CPU
/// network (`fused`: whether it runs at all), and the CPU time spent outside it.
fn print_layer_profile(fused: bool, work: impl FnOnce()) {
    use graft::backbone::fused::profile as layer_profile;
    if !fused {
        eprintln!(
            "--profile: per-layer times are kept by the MBConv family's fused CPU network; not used here"
        );
        return;
    }
    layer_profile::start();
    let (t0, cpu0) = (Instant::now(), process_cpu_seconds());
    work();
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_seconds() - cpu0);
    let times = layer_profile::stop();
    let total: f64 = times.iter().map(|(_, s)| s).sum();
    eprintln!(
        "CPU time per layer type ({wall:.2} s wall, {cpu:.2} s CPU, {total:.2} s in layers):"
    );
    let rows = times.iter().map(|(kind, s)| (kind.name(), *s));
    let outside = (
        "outside the layers (burn, data, threads waiting)",
        cpu - total,
    );
    for (name, seconds) in rows.chain([outside]).filter(|(_, s)| *s > 0.0) {
        eprintln!(
            "  {name:<48} {seconds:>7.3} s  {:>5.1}%",
            100.0 * seconds / cpu.max(1e-12)
        );
    }
}

fn train_step(args: BenchArgs) -> Result<ExitCode> {
    use burn::tensor::{Int, TensorData};
    use graft::train::finetune::{
        BackbonePass, BnMode, FrozenPrefix, new_model, set_trainable, train_step, training_pass,
    };

    let info = args.backbone.info()?;
    let path = args.backbone.weights_path()?;
    let backbone = graft::backbone::Backbone::load(
        info,
        &path,
        graft::backbone::LoadOptions::default(),
        &graft::backend::device(),
    )?;
    let r = backbone.config.resolution;
    let groups = backbone.config.layer_groups.len();
    let classes = 10;
    let head = graft::head::Head::Linear {
        weight: vec![0.0; classes * backbone.config.feature_dim],
        bias: vec![0.0; classes],
    };
    let device = graft::backend::device().autodiff();
    let mut model = new_model(backbone.net, &head, 0.2, &device);
    let training = args.train_groups.unwrap_or(groups);
    if training == 0 || training > groups {
        anyhow::bail!(
            "--train-groups {training}: {} has {groups} layer groups; give 1 to {groups}",
            args.backbone.backbone
        );
    }
    let trainable: Vec<usize> = (groups - training..groups).collect();
    model.net = set_trainable(model.net, &trainable, BnMode::Frozen);
    let prefix = FrozenPrefix::for_stage(&model.net, &trainable, BnMode::Frozen);
    let mut optimizer = burn::optim::AdamWConfig::new().init();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
    let lrs = vec![1e-4; groups + 1];
    let mut rng = run_rng(0, 0);
    let x = random_tensor::<4>(
        [args.batch_size, 3, r, r],
        Distribution::Uniform(-1.0, 1.0),
        &mut rng,
        &device,
    );
    let labels: Vec<i64> = (0..args.batch_size as i64)
        .map(|i| i % classes as i64)
        .collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [args.batch_size]), &device);
    let pass = if args.burn_autodiff {
        BackbonePass::Burn
    } else {
        training_pass(&model.net, BnMode::Frozen)
    };
    let mut run_once = |model| {
        train_step(
            model,
            &mut optimizer,
            &loss_fn,
            x.clone(),
            y.clone(),
            &trainable,
            &lrs,
            pass,
            prefix.as_ref(),
            &mut rng,
        )
        .0
    };
    model = run_once(model);
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    for _ in 0..args.iters {
        model = run_once(model);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let label = match training == groups {
        true => "train step (BN frozen, all layers)".to_string(),
        false => format!("train step (BN frozen, top {training} of {groups} layer groups)"),
    };
    print_result(
        &args,
        "train-step",
        &label,
        &args.backbone.backbone,
        r,
        wall,
        cpu,
    );
    if args.profile {
        let profiled = pass == BackbonePass::Fused && model.net.as_mbconv().is_some();
        print_layer_profile(profiled, move || {
            for _ in 0..args.iters {
                model = run_once(model);
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// One measurement, as a JSON line (`--json`, read by bench/) or a sentence. `backbone` is the
/// name as given on the command line, which the peers' scripts use for the same model.
fn print_result(
    args: &BenchArgs,
    what: &str,
    label: &str,
    backbone: &str,
    resolution: usize,
    wall: f64,
    cpu: f64,
) {
    let images = (args.iters * args.batch_size) as f64;
    let rss_mb = peak_rss_bytes() as f64 / 1e6;
    if args.json {
        let result = serde_json::json!({
            "tool": "graft",
            "backend": graft::backend::name(),
            "what": what,
            "backbone": backbone,
            "batch_size": args.batch_size,
            "resolution": resolution,
            "threads": rayon::current_num_threads(),
            "train_groups": args.train_groups,
            "images_per_sec": images / wall,
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_over_wall": cpu / wall,
            "peak_rss_mb": rss_mb,
        });
        println!("{result}");
    } else {
        println!(
            "graft {backbone} {label} batch {} @{resolution}px: {:.1} img/s, CPU/wall {:.2}, peak RSS {rss_mb:.0} MB",
            args.batch_size,
            images / wall,
            cpu / wall,
        );
    }
}
