//! Class names of the label sets pretrained tops predict.

use crate::backbone::LabelSet;

const IMAGENET_1K: &str = include_str!("../assets/imagenet_classes.txt");

/// The class names of `set`, index = class id.
pub fn names(set: LabelSet) -> Vec<&'static str> {
    match set {
        LabelSet::ImageNet1k => IMAGENET_1K.lines().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_has_1000_classes_in_standard_order() {
        let names = names(LabelSet::ImageNet1k);
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "tench, Tinca tinca");
        assert_eq!(names[19], "chickadee");
        assert_eq!(names[934], "hotdog, hot dog, red hot");
    }
}
