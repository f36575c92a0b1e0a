"""`launch.py detect`: a trained JoVALE on any video file -> AVA-format detections and drawings.

    python launch.py detect --config configs/synthetic.py --video clip.mp4 --out DIR
        [--checkpoint W] [--boxes boxes.csv | --config.detect.detector=MODEL]
        [--video_out annotated.mp4] [--config.detect.keyframe_every=0.5]

The package: `proposals.py` (person boxes), `outputs.py` (what is written, and how), `driver.py`
(keyframes, model inputs, prediction, and `detect` itself). Options that are configuration live
in `config.detect` (configs/common.py); arguments name files and folders.

Keyframes: one every `detect.keyframe_every` seconds from the first frame: t = 0, e, 2e, ...
below the video's duration (at least one). Timestamps in the outputs are these seconds, written
as integers when they are whole (AVA's format) and with up to 3 decimals otherwise.

Inputs of a keyframe: read exactly as the dataset builders read a keyframe
(`jovale_jax.datasets.video.read_clips`: `model.video.num_frames` frames `data.frame_stride` apart
at `data.fps`, centred on the keyframe, edge frames repeated past the video's ends, as JPEG with a
short side of at most max(`data.short_side`, `data.eval_short_side`); the scene frames of the same
window at `model.scene.image_size` squared; the window's 16 kHz mono audio), then made into model
inputs by the input pipeline's own `decode_example`, as for an evaluation example: the frames
resized onto the canvas and left uint8 (the model normalises them on the device), the audio turned
into AST's features, the boxes padded to K. A file without an audio track gets zero audio features
with `audio_mask` false: the audio modality is masked, as for such examples in training, and the
output says so.

Person proposals, the K = `model.num_proposals` best by score, clipped to the frame:
  * `boxes_csv`: AVA-style rows `video_id, timestamp, x1, y1, x2, y2[, score]` (normalised to
    the frame, x right and y down from the top-left corner, timestamp in seconds from the first
    frame, no header, a missing score is 1), or AVA's 8-column `*_predicted_boxes.csv` rows
    `video_id, timestamp, x1, y1, x2, y2, action_id, score` (the action id, often empty, is
    ignored); e.g. `clip,0,0.12,0.20,0.35,0.95,0.98`. Rows of other videos are ignored; a file
    without a row for this video (its id is the file name without extension) is an error naming
    the ids it has. A row must fall on a keyframe time (to the millisecond); rows that do not are
    counted in the result.
  * `detect.detector`: a transformers object-detection model (hub id or local folder, loaded with
    `AutoModelForObjectDetection` and `AutoImageProcessor`; the optional `convert` extra), run on
    the keyframe image (the clip frame nearest to the keyframe, as the model sees it); the boxes
    whose predicted label is the class named "person" in its `config.id2label`, with a score of at
    least `detect.detector_threshold`. A local folder (or any name while the hub is unreachable
    or `HF_HUB_OFFLINE` is set) loads with `local_files_only`: a detector that cannot be loaded
    fails at once, without hub retries. Keyframes left without a person say why in the notes
    (every person score under the threshold, with the best one, or no person at all).
  * neither: the documented fallback, one whole-frame box (0, 0, 1, 1) with score 1 per keyframe.
    It is right when one person fills the frame; with several people the labels describe the
    whole scene rather than one actor.

Outputs, in `out_dir`:
  * `detections.csv`: AVA format `video_id, timestamp, x1, y1, x2, y2, action_id, score`, every
    class of every proposal (action ids from the dataset's label map);
  * `keyframes/NNNNN_<t>s.png`: the video's frame at the keyframe time, at the video's resolution
    (enlarged to a short side of 256 when smaller), with the boxes and their top-3 labels;
  * `detect.json`: what `detect` returns (the manifest), written last.
Everything is written in a hidden temporary folder beside `out_dir` and renamed to `out_dir` at
the end, so an interrupted or failed run leaves no `out_dir` that looks complete; an existing
`out_dir` is replaced only when it is empty or a previous `detect` output (it holds
`detect.json`). With `video_out`, the video is also written with every frame showing the
detections of its nearest keyframe (H.264, the source's frame rate; its first audio track as AAC).

Bad input (a missing path, a file that is not a video, a boxes CSV for another video, an
`out_dir` holding other files) raises `FileNotFoundError` or `common.BadInputError` (a
`ValueError`) with a one-line message naming the file and the problem, before the model is loaded;
a video that fails to decode later fails the same way, and the staging folder is removed.
`detect` runs in one process, on the devices of the config's mesh.
"""

from jovale_jax.detect.driver import detect

__all__ = ["detect"]
