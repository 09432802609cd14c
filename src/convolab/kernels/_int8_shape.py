"""The int8 microkernel's tile shape, shared by its compiled half (`convolab.kernels._int8`)
and its drivers (`convolab.kernels.int8`), which import it from here so that neither imports
the other to learn it."""

#: consecutive output pixels per tile (row after row), and per tile of an image's last <= 4
MR = 12
MR_TAIL = 4
#: vectors of output channels per tile
NV = 2
#: pointwise tiles (pixels in the lanes, `pack_weights_pw`): output channels x pixel vectors
PW_MK = 8
PW_NV = 3
