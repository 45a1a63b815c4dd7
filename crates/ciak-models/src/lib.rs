//! Tensor code for the Wan architecture. Names are checkpoint keys; configs read diffusers'
//! `config.json` as it is. No file access and no policy here: the engine does that.
pub mod wan;
