"""Evaluation protocols: AVA frame mAP (`ava`), VOC frame mAP (`frame_map`) and the AVA-format
detections CSV (`detections_csv`); numpy only."""
