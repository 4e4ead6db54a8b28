//! A Keras-like `summary`: one row per layer group with its output shape and parameter counts.

use std::fmt;

use super::blocks::{ConvBnAct, conv_output_size};
use super::mbnet::MbNet;

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
        let rule = "-".repeat(86);
        writeln!(f, "Model: {}", self.model)?;
        writeln!(f, "{rule}")?;
        writeln!(
            f,
            "{:<12} {:<28} {:<18} {:>12} {:>12}",
            "Group", "Layers", "Output shape", "Trainable", "Non-train."
        )?;
        writeln!(f, "{}", "=".repeat(86))?;
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
                "{:<12} {:<28} {:<18} {:>12} {:>12}",
                row.group,
                row.layers,
                shape,
                thousands(row.trainable),
                thousands(row.non_trainable)
            )?;
        }
        writeln!(f, "{}", "=".repeat(86))?;
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
