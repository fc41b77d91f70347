# Training settings of the README's quality runs on sketchy-mini (sourced by quality.sh and cross_dataset.sh).
# linear: the params.yaml defaults (300 steps, batch 32, lr 1e-3); 1,000 steps gave the same unseen mAP@all
# (0.256 vs 0.254). zse head-only (width 256): 150 steps, batch 16, lr 3e-4; 1,000 steps at batch 32
# overfit the 1,102 training sketches (triplet loss 0, unseen token mAP@all 0.187 vs 0.202).
LINEAR=()
ZSE=(train.steps=150 train.batch_size=16 train.lr=0.0003 train.eval_every=50 train.checkpoint_every=50)
