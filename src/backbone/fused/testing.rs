//! Test helpers of the fused training forms, shared by the families' gradient tests.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};

use crate::rng::{RunRng, random_tensor};

/// Every float parameter's gradient under both computations, by parameter: the largest
/// difference may be `tolerance` times the parameter's largest gradient.
pub(crate) struct Compare<'a> {
    burn: &'a GradientsParams,
    fused: &'a GradientsParams,
    tolerance: f32,
    pub(crate) compared: usize,
}

impl<'a> Compare<'a> {
    pub(crate) fn new(
        burn: &'a GradientsParams,
        fused: &'a GradientsParams,
        tolerance: f32,
    ) -> Self {
        Self {
            burn,
            fused,
            tolerance,
            compared: 0,
        }
    }
}

impl ModuleVisitor for Compare<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (a, b) = (self.burn.get::<D>(param.id), self.fused.get::<D>(param.id));
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => return,
            _ => panic!("{:?}: a gradient on one side only", param.shape()),
        };
        let (a, b) = (values(a), values(b));
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.0, "{:?}: zero gradient", param.shape());
        assert!(
            worst <= self.tolerance * scale,
            "{:?}: gradients differ by {worst} (scale {scale})",
            param.shape()
        );
        self.compared += 1;
    }
}

/// The values of a float tensor.
pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec().unwrap()
}

/// Draws every tensor: matrices and the patch conv scaled by their fan-in (so the tokens
/// keep their size through the blocks), LayerNorm, biases and layer scale around one,
/// tokens and position embedding normal.
pub(crate) struct Randomise<'a>(pub(crate) &'a mut RunRng);

impl ModuleMapper for Randomise<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut *self.0;
        param.map(|t| {
            let dims: [usize; D] = t.dims();
            let fan_in = |n: usize| Distribution::Normal(0.0, (1.0 / n as f64).sqrt());
            let distribution = match D {
                1 => Distribution::Uniform(0.5, 1.5),
                2 => fan_in(dims[0]),
                4 => fan_in(dims[1..].iter().product()),
                _ => Distribution::Normal(0.0, 0.5),
            };
            random_tensor::<D>(dims, distribution, rng, &t.device())
        })
    }
}
