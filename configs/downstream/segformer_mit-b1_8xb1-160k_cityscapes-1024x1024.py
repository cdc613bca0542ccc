# SegFormer MiT-B1 on Cityscapes (1024x1024 crops, 160k): B0's recipe with a wider, deeper encoder.
_base_ = ["./segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py"]
checkpoint = "{{$MIT_PRETRAINED_DIR:pretrained}}/mit_b1_20220624-02e5a6a1.pth"
model = dict(
    backbone=dict(
        init_cfg=dict(type="Pretrained", checkpoint=checkpoint), embed_dims=64, num_layers=[2, 2, 2, 2]
    ),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
)
