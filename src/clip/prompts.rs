//! Prompt templates for zero-shot classification: a class's text embedding is the mean of
//! the (normalised) embeddings of its label in every template, as the CLIP paper does
//! ("prompt ensembling", section 3.1.4: +3.5 pt on ImageNet over the label alone).

/// The 80 ImageNet templates of the CLIP paper's zero-shot evaluation (OpenAI's notebook,
/// OpenCLIP's `OPENAI_IMAGENET_TEMPLATES`); `{}` is the label.
pub const IMAGENET_TEMPLATES: &[&str] = &[
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// How labels become sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompts {
    /// [`IMAGENET_TEMPLATES`], averaged per class.
    ImageNetEnsemble,
    /// One or more templates of the user's, each with one `{}`.
    Templates(Vec<String>),
}

impl Prompts {
    /// The user's templates, each checked to hold exactly one `{}`.
    pub fn templates(templates: Vec<String>) -> Result<Self, String> {
        if templates.is_empty() {
            return Err("no prompt template given".into());
        }
        for t in &templates {
            if t.matches("{}").count() != 1 {
                return Err(format!(
                    "prompt template `{t}` must hold `{{}}` exactly once, where the label goes"
                ));
            }
        }
        Ok(Self::Templates(templates))
    }

    /// The sentences for `label`, one per template.
    pub fn sentences(&self, label: &str) -> Vec<String> {
        match self {
            Self::ImageNetEnsemble => IMAGENET_TEMPLATES
                .iter()
                .map(|t| t.replace("{}", label))
                .collect(),
            Self::Templates(ts) => ts.iter().map(|t| t.replace("{}", label)).collect(),
        }
    }

    /// For humans and run records.
    pub fn describe(&self) -> String {
        match self {
            Self::ImageNetEnsemble => format!(
                "CLIP's {} ImageNet templates, averaged",
                IMAGENET_TEMPLATES.len()
            ),
            Self::Templates(ts) if ts.len() == 1 => format!("\"{}\"", ts[0]),
            Self::Templates(ts) => format!("{} templates, averaged", ts.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_takes_the_label_once() {
        assert_eq!(IMAGENET_TEMPLATES.len(), 80);
        for t in IMAGENET_TEMPLATES {
            assert_eq!(t.matches("{}").count(), 1, "{t}");
        }
        let p = Prompts::templates(vec!["a photo of a {}.".into()]).unwrap();
        assert_eq!(p.sentences("rose"), ["a photo of a rose."]);
        assert!(Prompts::templates(vec!["no slot".into()]).is_err());
        assert!(Prompts::templates(vec!["{} and {}".into()]).is_err());
    }
}
