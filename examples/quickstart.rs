//! Placeholder until the model zoo lands: attacks a fixed softmax regression.
fn main() {}
