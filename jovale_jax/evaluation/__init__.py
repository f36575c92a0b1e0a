"""Evaluation protocols: AVA frame mAP (`ava`) and VOC frame mAP (`frame_map`); numpy only."""
