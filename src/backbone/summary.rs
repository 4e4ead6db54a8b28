//! A Keras-like `summary`: one row per layer group with its output shape and parameter counts.

use std::fmt;

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use super::convnext::ConvNeXt;
use super::mbconv::MbNet;
use super::mbconv::blocks::{ConvBnAct, conv_output_size};
use super::network::Network;
use super::resnet::{ResBlock, ResNet};
use super::vit::Vit;

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub group: String,
    pub layers: String,
    /// `[C, H, W]` or `[C]`, without the batch dimension.
    pub output_shape: Vec<usize>,
    pub trainable: usize,
    pub non_trainable: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub model: String,
    pub rows: Vec<SummaryRow>,
}

impl Summary {
    pub fn total(&self) -> usize {
        self.trainable() + self.non_trainable()
    }
    pub fn trainable(&self) -> usize {
        self.rows.iter().map(|r| r.trainable).sum()
    }
    pub fn non_trainable(&self) -> usize {
        self.rows.iter().map(|r| r.non_trainable).sum()
    }
}

/// (trainable, non-trainable) of one conv-bn layer. As in Keras, BatchNorm's moving
/// mean and variance count as non-trainable.
fn conv_params(layer: &ConvBnAct) -> (usize, usize) {
    let conv: usize = layer.weight.dims().iter().product();
    let c = layer.out_channels();
    (conv + 2 * c, 2 * c)
}

fn conv_out(layer: &ConvBnAct, side: usize) -> usize {
    conv_output_size(layer.padding, side, layer.kernel, layer.stride)
}

/// Build the summary of `net` for square inputs of side `resolution`.
pub fn summarize(model: &str, net: &MbNet, resolution: usize) -> Summary {
    // One row per layer group (see `groups`), then the pool and the classifier.
    let groups = net.group_names();
    let mut rows = Vec::new();
    let mut side = conv_out(&net.stem, resolution);
    let (t, n) = conv_params(&net.stem);
    rows.push(SummaryRow {
        group: groups[0].clone(),
        layers: format!(
            "conv {0}x{0}/{1}, bn, relu6",
            net.stem.kernel, net.stem.stride
        ),
        output_shape: vec![net.stem.out_channels(), side, side],
        trainable: t,
        non_trainable: n,
    });
    let mut start = 0;
    for (stage, &end) in net.stage_ends.iter().enumerate() {
        let (mut trainable, mut non_trainable) = (0, 0);
        for block in &net.blocks[start..=end] {
            let layers = block
                .expand
                .iter()
                .chain([&block.depthwise, &block.project]);
            for layer in layers {
                let (t, n) = conv_params(layer);
                trainable += t;
                non_trainable += n;
            }
            side = conv_out(&block.depthwise, side);
        }
        let first = &net.blocks[start];
        rows.push(SummaryRow {
            group: groups[stage + 1].clone(),
            layers: format!(
                "{} x MBConv k{}{}",
                end + 1 - start,
                first.depthwise.kernel,
                if first.depthwise.stride > 1 {
                    " /2"
                } else {
                    ""
                }
            ),
            output_shape: vec![net.blocks[end].project.out_channels(), side, side],
            trainable,
            non_trainable,
        });
        start = end + 1;
    }
    let (t, n) = conv_params(&net.head);
    rows.push(SummaryRow {
        group: groups[groups.len() - 1].clone(),
        layers: "conv 1x1, bn, relu6".into(),
        output_shape: vec![net.head.out_channels(), side, side],
        trainable: t,
        non_trainable: n,
    });
    rows.push(SummaryRow {
        group: "pool".into(),
        layers: "global average pool".into(),
        output_shape: vec![net.head.out_channels()],
        trainable: 0,
        non_trainable: 0,
    });
    if let Some(classifier) = &net.classifier {
        let [d_in, d_out] = classifier.weight.dims();
        rows.push(SummaryRow {
            group: "classifier".into(),
            layers: "dense (logits)".into(),
            output_shape: vec![d_out],
            trainable: d_in * d_out + d_out,
            non_trainable: 0,
        });
    }
    Summary {
        model: model.into(),
        rows,
    }
}

/// The summary of any family's network for square inputs of side `resolution`.
pub fn summarize_network(model: &str, net: &Network, resolution: usize) -> Summary {
    let rows = match net {
        Network::MbConv(net) => return summarize(model, net, resolution),
        Network::ResNet(net) => resnet_rows(net, resolution),
        Network::ConvNeXt(net) => convnext_rows(net, resolution),
        Network::Vit(net) => vit_rows(net, resolution),
    };
    Summary {
        model: model.into(),
        rows,
    }
}

/// `[C, H, W]` of each group's output, from one pass over a blank image.
fn group_shapes(groups: Vec<Tensor<4>>) -> Vec<Vec<usize>> {
    groups.iter().map(|t| t.dims()[1..].to_vec()).collect()
}

/// BatchNorm's moving mean and variance: non-trainable, as in Keras (burn's `num_params`
/// counts them with the rest).
fn bn_stats(bn: &BatchNorm) -> usize {
    2 * bn.running_mean.value().dims()[0]
}

fn resnet_block_stats(block: &ResBlock) -> usize {
    [
        Some(&block.conv1),
        Some(&block.conv2),
        block.conv3.as_ref(),
        block.downsample.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|c| bn_stats(&c.bn))
    .sum()
}

fn resnet_rows(net: &ResNet, resolution: usize) -> Vec<SummaryRow> {
    let blank = Tensor::zeros([1, 3, resolution, resolution], &net.device());
    let shapes = group_shapes(net.forward_groups(blank));
    let mut rows = vec![SummaryRow {
        group: "stem".into(),
        layers: "conv 7x7/2, bn, relu, maxpool 3x3/2".into(),
        output_shape: shapes[0].clone(),
        trainable: net.stem.num_params() - bn_stats(&net.stem.bn),
        non_trainable: bn_stats(&net.stem.bn),
    }];
    for (s, stage) in net.stages.iter().enumerate() {
        let stats: usize = stage.blocks.iter().map(resnet_block_stats).sum();
        let kind = if stage.blocks[0].conv3.is_some() {
            "Bottleneck"
        } else {
            "BasicBlock"
        };
        rows.push(SummaryRow {
            group: format!("layer{}", s + 1),
            layers: format!(
                "{} x {kind}{}",
                stage.blocks.len(),
                if s > 0 { " /2" } else { "" }
            ),
            output_shape: shapes[s + 1].clone(),
            trainable: stage.num_params() - stats,
            non_trainable: stats,
        });
    }
    let dim = shapes[4][0];
    rows.push(SummaryRow {
        group: "pool".into(),
        layers: "global average pool".into(),
        output_shape: vec![dim],
        trainable: 0,
        non_trainable: 0,
    });
    rows.extend(net.fc.as_ref().map(classifier_row));
    rows
}

fn convnext_rows(net: &ConvNeXt, resolution: usize) -> Vec<SummaryRow> {
    let blank = Tensor::zeros([1, 3, resolution, resolution], &net.device());
    let shapes = group_shapes(net.forward_groups(blank));
    // LayerNorm keeps no running statistics: nothing is non-trainable.
    let mut rows = vec![SummaryRow {
        group: "stem".into(),
        layers: "conv 4x4/4, layernorm".into(),
        output_shape: shapes[0].clone(),
        trainable: net.stem_conv.num_params() + net.stem_norm.num_params(),
        non_trainable: 0,
    }];
    for (s, stage) in net.stages.iter().enumerate() {
        rows.push(SummaryRow {
            group: format!("stage{s}"),
            layers: format!(
                "{}{} x ConvNeXt block",
                if s > 0 { "ln, conv 2x2/2, " } else { "" },
                stage.blocks.len()
            ),
            output_shape: shapes[s + 1].clone(),
            trainable: stage.num_params(),
            non_trainable: 0,
        });
    }
    rows.push(SummaryRow {
        group: "pool".into(),
        layers: "global average pool, layernorm".into(),
        output_shape: vec![shapes[4][0]],
        trainable: net.head_norm.num_params(),
        non_trainable: 0,
    });
    rows.extend(net.fc.as_ref().map(classifier_row));
    rows
}

fn vit_rows(net: &Vit, resolution: usize) -> Vec<SummaryRow> {
    let [dim, _, patch, _] = net.patch_embed.weight.dims();
    let side = resolution / patch;
    let tokens = vec![side * side + net.prefix_tokens, dim];
    // LayerNorm keeps no running statistics: nothing is non-trainable.
    let embed = net.patch_embed.num_params()
        + net.cls_token.num_params()
        + net.reg_token.as_ref().map_or(0, |r| r.num_params())
        + net.pos_embed.num_params();
    let registers = net.prefix_tokens - 1;
    let mut rows = vec![SummaryRow {
        group: "embed".into(),
        layers: format!(
            "patch {patch}x{patch}, cls{}, position",
            if registers > 0 {
                format!(" + {registers} reg")
            } else {
                String::new()
            }
        ),
        output_shape: tokens.clone(),
        trainable: embed,
        non_trainable: 0,
    }];
    for (g, group) in net.blocks.chunks(net.blocks_per_group).enumerate() {
        rows.push(SummaryRow {
            group: format!("blocks{g}"),
            layers: format!("{} x transformer block", group.len()),
            output_shape: tokens.clone(),
            trainable: group.iter().map(|b| b.num_params()).sum(),
            non_trainable: 0,
        });
    }
    rows.push(SummaryRow {
        group: "norm".into(),
        layers: "layernorm".into(),
        output_shape: tokens,
        trainable: net.norm.num_params(),
        non_trainable: 0,
    });
    rows.push(SummaryRow {
        group: "pool".into(),
        layers: if net.mean_patch_feature {
            "class token + mean patch token".into()
        } else {
            "class token".into()
        },
        output_shape: vec![if net.mean_patch_feature { 2 * dim } else { dim }],
        trainable: 0,
        non_trainable: 0,
    });
    rows.extend(net.head.as_ref().map(classifier_row));
    rows
}

fn classifier_row(fc: &burn::nn::Linear) -> SummaryRow {
    let [_, d_out] = fc.weight.dims();
    SummaryRow {
        group: "classifier".into(),
        layers: "dense (logits)".into(),
        output_shape: vec![d_out],
        trainable: fc.num_params(),
        non_trainable: 0,
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = "-".repeat(94);
        writeln!(f, "Model: {}", self.model)?;
        writeln!(f, "{rule}")?;
        writeln!(
            f,
            "{:<12} {:<36} {:<18} {:>12} {:>12}",
            "Group", "Layers", "Output shape", "Trainable", "Non-train."
        )?;
        writeln!(f, "{}", "=".repeat(94))?;
        for row in &self.rows {
            let shape = format!(
                "(None, {})",
                row.output_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            writeln!(
                f,
                "{:<12} {:<36} {:<18} {:>12} {:>12}",
                row.group,
                row.layers,
                shape,
                thousands(row.trainable),
                thousands(row.non_trainable)
            )?;
        }
        writeln!(f, "{}", "=".repeat(94))?;
        writeln!(f, "Total params: {}", thousands(self.total()))?;
        writeln!(f, "Trainable params: {}", thousands(self.trainable()))?;
        writeln!(
            f,
            "Non-trainable params: {}",
            thousands(self.non_trainable())
        )?;
        write!(f, "{rule}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(3_504_872), "3,504,872");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
    }
}
