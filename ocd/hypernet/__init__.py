"""The hypernetwork: what predicts a weight delta from I(x). The conditional
diffusion model (diffusion.py: the denoiser, its conditioning and sampling;
schedule.py, unet.py, vecnet.py: its noise schedule and networks), the scale
model (scale.py), the no-diffusion regressor (regressor.py), and the one
training loop all three share (train.py).

None of it imports the store: the store's reader is passed in.
"""
