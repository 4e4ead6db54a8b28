//! Training randomness belongs to the run: two trainings with the same seed running at the
//! same time in one process (as a library user, the Python package or a server may run them)
//! give, bit for bit, what each gives alone.

mod common;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use graft::backbone::mbnet::MbNet;
use graft::data::{DecodeLimits, load_images, to_batch};
use graft::features::FeatureMatrix;
use graft::head::Head;
use graft::train::dense::{DenseOptions, train_dense};
use graft::train::finetune::{BnMode, new_model, set_trainable, train_step, training_pass};

use common::*;

/// Real pooled features: MobileNetV2 (ImageNet weights) on 8 photos of each flower class,
/// the first 6 of each for training and the rest for validation.
fn flower_features() -> (FeatureMatrix, FeatureMatrix) {
    let backbone = load("mobilenet-v2-tf", &mnv2_weights(), false, None).for_inference();
    let (mut train, mut val) = (FeatureMatrix::default(), FeatureMatrix::default());
    for (label, class) in FLOWER_CLASSES.iter().enumerate() {
        let paths: Vec<_> = flower_photos(class).into_iter().take(8).collect();
        let images = load_images(&paths, &backbone.config, DecodeLimits::default());
        let images: Vec<_> = images.iter().map(|r| r.as_ref().unwrap()).collect();
        let batch = to_batch(
            &images,
            backbone.config.resolution,
            &graft::backend::device(),
        );
        let rows: Vec<f32> = backbone.features(batch).into_data().try_into_vec().unwrap();
        let dim = rows.len() / paths.len();
        for (i, (row, path)) in rows.chunks(dim).zip(paths).enumerate() {
            let split = if i < 6 { &mut train } else { &mut val };
            split.dim = dim;
            split.rows.extend_from_slice(row);
            split.labels.push(label);
            split.paths.push(path);
        }
    }
    (train, val)
}

fn head_weights(head: &Head) -> Vec<u32> {
    let Head::Linear { weight, bias } = head else {
        panic!("the dense recipe makes a linear head")
    };
    weight.iter().chain(bias).map(|v| v.to_bits()).collect()
}

/// Runs `job` twice at once on two threads, then once alone; all three results must be equal.
fn same_alone_and_concurrent<T: PartialEq + std::fmt::Debug + Send>(job: impl Fn() -> T + Sync) {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(&job);
        let b = s.spawn(&job);
        (a.join().unwrap(), b.join().unwrap())
    });
    let alone = job();
    assert!(
        a == alone,
        "the first concurrent run differs from the run alone"
    );
    assert!(
        b == alone,
        "the second concurrent run differs from the run alone"
    );
}

#[test]
fn concurrent_head_trainings_equal_one_alone() {
    let (train, val) = flower_features();
    let options = DenseOptions {
        epochs: 15,
        batch_size: 8,
        dropout: 0.5,
        seed: 42,
        ..DenseOptions::default()
    };
    same_alone_and_concurrent(|| {
        let result = train_dense(&train, &val, FLOWER_CLASSES.len(), &options, |_| {})
            .expect("in-memory rows always read");
        (head_weights(&result.head), result.best_epoch)
    });
}

/// Two fine-tuning steps (dropout 0.5, every layer training, BatchNorm frozen) on 6 flower
/// photos; the parameters after the second step.
fn two_finetune_steps() -> Vec<u32> {
    let info = graft::backbone::find("efficientnet-lite0").unwrap();
    let config = info.source_config(None);
    let plain = graft::backend::device();
    let device = plain.clone().autodiff();
    let net = MbNet::init(
        &info.mbconv().unwrap().0,
        config.padding,
        config.bn_eps,
        false,
        &mut graft::rng::run_rng(3, 0),
        &plain,
    );
    let head = Head::Linear {
        weight: vec![0.01; 3 * config.feature_dim],
        bias: vec![0.0; 3],
    };
    let groups = config.layer_groups.len();
    let all: Vec<usize> = (0..groups).collect();
    let mut model = new_model(net, &head, 0.5, &device);
    model.net = set_trainable(model.net, &all, BnMode::Frozen);
    let paths: Vec<_> = ["daisy", "roses", "tulips"]
        .iter()
        .flat_map(|class| flower_photos(class).into_iter().take(2))
        .collect();
    let images = load_images(&paths, &config, DecodeLimits::default());
    let images: Vec<_> = images.iter().map(|r| r.as_ref().unwrap()).collect();
    let x = to_batch(&images, config.resolution, &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 0, 1, 1, 2, 2], [6]), &device);
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = burn::optim::AdamWConfig::new().init();
    let lrs = vec![1e-3; groups + 1];
    let pass = training_pass(&model.net, BnMode::Frozen);
    for step in 0..2 {
        model = train_step(
            model,
            &mut optimizer,
            &loss_fn,
            x.clone(),
            y.clone(),
            &all,
            &lrs,
            pass,
            None,
            &mut graft::rng::run_rng(42, step),
        )
        .0;
    }
    let record = model.valid();
    let top: Vec<f32> = record.top.weight.val().into_data().try_into_vec().unwrap();
    let stem: Vec<f32> = record
        .net
        .as_mbconv()
        .unwrap()
        .stem
        .weight
        .val()
        .into_data()
        .try_into_vec()
        .unwrap();
    top.iter().chain(&stem).map(|v| v.to_bits()).collect()
}

#[test]
fn concurrent_finetune_steps_equal_one_alone() {
    same_alone_and_concurrent(two_finetune_steps);
}
