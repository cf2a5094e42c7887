package media

const sysSendmmsg = 307
