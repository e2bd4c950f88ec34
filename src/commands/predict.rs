//! `palisweep predict`: the greedy answer for one image and prefix; for
//! detection answers also the boxes in pixels of the original image.

use super::output::outln;
use crate::cli::PredictArgs;
use crate::metrics::detection::{loc_to_pixels, parse_detections};
use crate::model::network::generate::generate;
use crate::model::preprocess::image::load_image;
use crate::model::preprocess::processor::Processor;

use super::eval::load_model;
use super::{checkpoint, runtime};

pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    let image = load_image(&args.image)?;
    let (width, height) = image.dimensions();
    let c = &args.checkpoint;
    let dir = checkpoint::resolve(&c.checkpoint, c.revision.as_deref(), &c.cache)?;
    let device = runtime::device(c.device.as_deref())?;
    let kind = runtime::kind(&c.precision, device)?;
    let model = load_model(&dir, c.adapter.as_deref(), device, kind)?;
    let processor = Processor::from_dir(&dir)?;
    let prompts = processor
        .encode_prompts(&[image], std::slice::from_ref(&args.prefix))?
        .to(device, kind);
    let special = processor.special_tokens();
    let ids = generate(
        &model,
        &prompts,
        args.max_new_tokens,
        &[i64::from(special.eos)],
        i64::from(special.pad),
    )?;
    let text = processor.decode(ids.first().map_or(&[][..], Vec::as_slice));
    outln!("{text}")?;
    let detections = parse_detections(&text);
    for object in &detections.objects {
        let b = loc_to_pixels(object.bbox, width, height);
        outln!("  {}: {b}", object.label)?;
    }
    Ok(())
}
