"""LiDAR 3-D detection stages shared by DSVT and its baselines: BEV scatter, BEV backbone, CenterPoint head."""
