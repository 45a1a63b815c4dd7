pub mod transformer;
pub mod vae;
pub mod umt5;
