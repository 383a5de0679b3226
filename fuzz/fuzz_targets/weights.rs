//! Model loading from safetensors bytes for each architecture (as `--model PATH --arch A`): any
//! bytes give a model or a typed error.
#![no_main]
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use perturb::zoo::{load_file, Arch};

fuzz_target!(|data: &[u8]| {
    let path = perturb_fuzz::as_file("weights", data);
    for arch in [Arch::MnistLinear, Arch::SmallCnn] {
        let _ = load_file(arch, &path, None, &Device::Cpu);
    }
});
