//! The IDX reader, raw and gzip'd: any bytes give an array or a typed error, never a panic, a
//! hang or an allocation past the declared limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = perturb_fuzz::as_file("idx", data);
    if let Ok(arr) = perturb::data::read_idx(&path) {
        let count: usize = arr.dims.iter().product();
        assert_eq!(arr.data.len(), count);
    }
});
