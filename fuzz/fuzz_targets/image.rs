//! Image loading (PNG, JPEG) as MNIST digits and as photos: any bytes give a tensor in [0, 1] or
//! a typed error.
#![no_main]
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use perturb::data::{load_image, load_photo, Fit};

fuzz_target!(|data: &[u8]| {
    let path = perturb_fuzz::as_file("image", data);
    if let Ok(t) = load_image(&path, 1, 28, 28, &Device::Cpu) {
        assert_eq!(t.dims(), [1, 28, 28]);
    }
    if let Ok(t) = load_photo(&path, 32, Fit::ResizeCrop, &Device::Cpu) {
        assert_eq!(t.dims(), [3, 32, 32]);
    }
});
