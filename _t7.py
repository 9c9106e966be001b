import numpy as np, time
from lrmath import data
from lrmath.kashin import quantize, hqq_quantize, rtn_quantize
names=[f"{n}.weight" for n,_ in data.linear_layers() if n.startswith("encoder.")][::6]
Ws=data.load_weights(names)
def ev(f):
    e=[];b=[]
    for n in names:
        W=np.asarray(Ws[n],np.float32); Wh,bpw=f(W); e.append(np.linalg.norm(W-Wh)/np.linalg.norm(W)); b.append(bpw)
    return np.mean(e), np.mean(b)
def K(bits, **kw):
    def f(W):
        q=quantize(W,bits,**kw); return q.dequantize(), q.bits_per_weight
    return f
print(names)
print("hqq4", ev(lambda W: hqq_quantize(W,4,64)))
for kw in [dict(), dict(layout="rows"), dict(block=128), dict(block=64), dict(layout="rows", block=128), dict(layout="rows",block=64)]:
    t=time.time(); print(4, kw, ev(K(4, **kw)), time.time()-t)
