import numpy as np, time
from lrmath import data, ops
from lrmath.kashin.quantize import _encode_blocks, _values, _frame_rows
names=[f"{n}.weight" for n,_ in data.linear_layers() if n.startswith("encoder.")][::6][:3]
Ws=data.load_weights(names)
op=ops.orthogonal("hadamard",256,0)
fwd,bwd=_frame_rows(op,np,np.float32)
for bu,bv,it in [(2,2,10),(3,1,10),(1,3,10),(2,2,25)]:
    e=[]
    for n in names:
        W=np.asarray(Ws[n],np.float32); X=W.reshape(-1,256)
        cu,cv,a,b,Tu,Tv,_=_encode_blocks(X,op,bu,bv,"default",it)
        a=a.astype(np.float16).astype(np.float32); b=b.astype(np.float16).astype(np.float32)
        Xh=a[:,None]*_values(Tu,cu)+b[:,None]*fwd(_values(Tv,cv))
        e.append(np.linalg.norm(X-Xh)/np.linalg.norm(X))
    print(bu,bv,it,np.mean(e))
