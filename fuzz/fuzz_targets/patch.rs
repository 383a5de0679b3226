//! Patch loading (safetensors or PNG): any bytes give a patch or a typed error.
#![no_main]
use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = perturb_fuzz::as_file("patch", data);
    let _ = perturb::attack::Patch::load(&path, &Device::Cpu);
});
