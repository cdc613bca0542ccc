# A tiny MiT (stage widths 16/32/64/128, one block per stage) for the procedural city on a CPU.
_base_ = ["./segformer_mit-b0.py"]
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=64, dropout_ratio=0.0, norm_cfg=norm_cfg),
)
