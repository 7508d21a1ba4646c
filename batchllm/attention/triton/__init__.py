"""What ships on the GPU: the Triton attention backend, its kernels, their launch planning and checks."""
