//! The hyper-parameters a run directory records in `model.json`, one type per recipe, written
//! and read through the same types (the report and `doctor` read them typed too).

use serde::{Deserialize, Serialize};

use crate::train::Recipe;
use crate::train::classical::ClassicalOptions;
use crate::train::dense::DenseOptions;
use crate::train::finetune::FinetuneOptions;

/// `model.json`'s `hyperparameters`: the options of the recipe that made the run. On disk it
/// is the options' own object (no tag); which variant it is follows from its fields, and
/// [`Hyperparameters::matches`] checks it against the card's recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Hyperparameters {
    /// Recipe `head`.
    Head(DenseOptions),
    /// Recipes `logreg`, `svm` and `knn`.
    Classical(ClassicalOptions),
    /// Recipe `finetune`.
    Finetune(Box<FinetuneRecord>),
}

/// What a fine-tuning run records: its options and what the run did with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneRecord {
    /// The options; `head_epochs` is the number of epochs the head round ran.
    #[serde(flatten)]
    pub options: FinetuneOptions,
    /// The weights the backbone started from (`weights_id` of the store's checkpoint).
    pub parent_weights_id: String,
    /// First epoch of each unfreezing stage that ran (epochs count from the head round's first).
    pub stage_starts: Vec<usize>,
    pub group_learning_rates: GroupRateHistory,
}

/// The mean learning rate of every layer group (and the top, last) over each epoch after the
/// head round; 0 while a group is frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRateHistory {
    pub groups: Vec<String>,
    pub first_epoch: usize,
    pub per_epoch: Vec<Vec<f64>>,
}

impl Hyperparameters {
    /// Whether these are options of `recipe`.
    pub fn matches(&self, recipe: Recipe) -> bool {
        matches!(
            (self, recipe),
            (Hyperparameters::Head(_), Recipe::Head)
                | (
                    Hyperparameters::Classical(_),
                    Recipe::Logreg | Recipe::Svm | Recipe::Knn
                )
                | (Hyperparameters::Finetune(_), Recipe::Finetune)
        )
    }

    /// The fine-tuning record, for a fine-tuning run.
    pub fn finetune(&self) -> Option<&FinetuneRecord> {
        match self {
            Hyperparameters::Finetune(record) => Some(record),
            _ => None,
        }
    }

    /// The dense head's options, for a `head` run.
    pub fn head(&self) -> Option<&DenseOptions> {
        match self {
            Hyperparameters::Head(options) => Some(options),
            _ => None,
        }
    }

    /// Setting name and value, as the report's table lists them (per-epoch records left out).
    pub fn settings(&self) -> Vec<(String, String)> {
        let value = match self {
            Hyperparameters::Finetune(record) => serde_json::to_value(&record.options),
            other => serde_json::to_value(other),
        };
        let mut settings: Vec<(String, String)> = value
            .ok()
            .and_then(|v| v.as_object().cloned())
            .into_iter()
            .flatten()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        if let Hyperparameters::Finetune(record) = self {
            settings.push((
                "parent_weights_id".into(),
                format!("\"{}\"", record.parent_weights_id),
            ));
            settings.sort();
        }
        settings
    }
}

impl<'de> Deserialize<'de> for Hyperparameters {
    // The variant is told by a field only it has, so that a broken file gets the error of the
    // type it meant to be (a missing or mistyped field, named) rather than "no variant matched".
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let has = |key: &str| value.get(key).is_some();
        if has("head_learning_rate") {
            serde_json::from_value(value)
                .map(|r| Hyperparameters::Finetune(Box::new(r)))
                .map_err(|e| D::Error::custom(format!("fine-tuning hyper-parameters: {e}")))
        } else if has("logreg_alpha") {
            serde_json::from_value(value)
                .map(Hyperparameters::Classical)
                .map_err(|e| D::Error::custom(format!("classical hyper-parameters: {e}")))
        } else {
            serde_json::from_value(value)
                .map(Hyperparameters::Head)
                .map_err(|e| D::Error::custom(format!("head hyper-parameters: {e}")))
        }
    }
}
