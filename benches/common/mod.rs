//! Inputs, attacks and a measurement for the benches.

pub mod ten_gradients;

use candle_core::{Device, Module, Tensor};
use perturb::data::{load_photo, sample_photo, Fit, SAMPLE_PHOTOS};
use perturb::{Budget, Goal, Pgd};

/// The sample photos, resized and center-cropped to 224×224 as EfficientNet-Lite0 takes them.
pub fn photos(dev: &Device) -> Vec<Tensor> {
    SAMPLE_PHOTOS
        .iter()
        .map(|p| load_photo(sample_photo(p), 224, Fit::ResizeCrop, dev).expect("photo"))
        .collect()
}

/// A batch of `n` photos (the samples, cycled) and the goal of leaving `net`'s own predictions.
pub fn photo_batch(net: &impl Module, photos: &[Tensor], n: usize) -> (Tensor, Goal) {
    let xs: Vec<Tensor> = (0..n).map(|i| photos[i % photos.len()].clone()).collect();
    let x = Tensor::stack(&xs, 0).expect("x");
    let y = net.forward(&x).expect("fwd").argmax(1).expect("argmax");
    (x, Goal::untargeted(&y))
}

/// PGD-10 at ε = 2/255 for photos, without the gradient self-check (the attack alone is timed).
pub fn pgd10_photo() -> Pgd {
    Pgd::new(Budget::linf(2.0 / 255.0).expect("budget"))
        .steps(10)
        .check_gradient(false)
}
